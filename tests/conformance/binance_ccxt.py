#!/usr/bin/env python3
"""Conformance of `bulwark sim` with a real third-party Binance USDⓈ-M client: ccxt's
`binanceusdm`, pinned in requirements.txt, driven through its ordinary calls.

The client is configured as any user would point it at another Binance host, and nothing else:
  * every URL in `urls['api']` keeps its path and gets the simulator's scheme and host;
  * `options['fetchCurrencies'] = False`: without it `load_markets` asks the *spot wallet*
    (`GET /sapi/v1/capital/config/getall`, signed) for currencies whenever API keys are set;
    with it ccxt builds the currencies from the markets, as it does for a client without keys.
  * the negative tests use ccxt's documented `options['timeDifference']` (what it subtracts from
    the local clock when it signs) and an explicit `timestamp` parameter on an implicit API call.
Everything else is ccxt's default: `options['fetchMarkets'] = {'types': ['linear']}` (binanceusdm's
own default, so only `GET /fapi/v1/exchangeInfo`), `adjustForTimeDifference` off (signed requests
carry the *local* clock as `timestamp`, with `recvWindow=10000`), `enableRateLimit` on.

Environment: SIM_URL (http://127.0.0.1:PORT), SIM_API_KEY, SIM_API_SECRET; CONFORMANCE_TRACE=1
prints every request under every check (by default only under failed ones). For diagnosis only
(tests/conformance.rs never sets it): CONFORMANCE_SERVER_CLOCK=1 turns on ccxt's documented
`options['adjustForTimeDifference']` for the main client, which then signs with the server's
clock (`GET /fapi/v1/time` at load_markets), so the signed calls can be checked against a
simulator whose clock is not the wall clock.

Prints one line per check, `ok NAME` or `FAIL NAME: REASON`, runs every check whatever failed
before, and exits 1 if any check failed (2 if it could not start).
"""

import logging
import os
import re
import signal
import sys
import time
from urllib.parse import parse_qsl, urlsplit

import ccxt

SYMBOL = 'XRP/USDT:USDT'  # the simulator's recorded 5m market (tests/sim_process: XRPUSDT replay)
GENERATED = 'BTC/USDT:USDT'  # a generated (random walk) market
FIVE_MINUTES = 300_000
ONE_MINUTE = 60_000
LEVERAGE = 5
# Every call is bounded by ccxt's 10 s timeout; this bounds the whole run.
DEADLINE_SECONDS = 300


class RequestLog(logging.Handler):
    """Every request ccxt sends and the answer's status, from ccxt's own debug log lines
    (`base/exchange.py` fetch(): "%s %s, Request: %s %s" and "%s %s, Response: %s %s %s")."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.entries = []

    def emit(self, record):
        try:
            if ', Request:' in record.msg:
                method, url, _headers, body = record.args
                self.entries.append({'method': method, 'url': url, 'body': body, 'status': None, 'response': None})
            elif ', Response:' in record.msg:
                method, url, status, _headers, body = record.args
                for entry in reversed(self.entries):
                    if entry['status'] is None and entry['method'] == method and entry['url'] == url:
                        entry['status'] = status
                        entry['response'] = body
                        break
        except Exception:  # a log line we do not know: never a reason for a check to fail
            pass


def redact(query):
    """A query or form body with the per-request values (timestamp, signature) elided."""
    if not query:
        return ''
    parts = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ('timestamp', 'signature'):
            value = '…'
        parts.append(f'{key}={value}')
    return '&'.join(parts)


def describe_request(entry):
    url = urlsplit(entry['url'])
    line = f"{entry['method']} {url.path}"
    query = redact(url.query)
    if query:
        line += '?' + query
    body = entry['body']
    if isinstance(body, bytes):
        body = body.decode('utf-8', 'replace')
    if body:
        line += f'  body: {redact(body)}'
    status = entry['status']
    line += f"  -> {status if status is not None else 'no answer'}"
    if status is not None and not 200 <= int(status) < 300:
        line += f"  {one_line(entry['response'], 200)}"
    return line


def one_line(text, limit=400):
    text = re.sub(r'\s+', ' ', str(text)).strip()
    return text if len(text) <= limit else text[:limit] + '…'


class Unmet(Exception):
    """A check that cannot run because an earlier one did not give it what it needs."""


def need(value, what):
    if value is None:
        raise Unmet(f'not checked: needs {what}')
    return value


class Suite:
    def __init__(self, log, trace):
        self.log = log
        self.trace = trace
        self.failed = []
        self.passed = []

    def check(self, name, body):
        start = len(self.log.entries)
        try:
            body()
        except Unmet as unmet:
            self.fail(name, str(unmet), start)
        except AssertionError as failed:
            self.fail(name, str(failed) or 'assertion failed', start)
        except Exception as error:  # a ccxt error or a shape ccxt could not parse
            self.fail(name, f'{type(error).__name__}: {error}', start)
        else:
            self.passed.append(name)
            print(f'ok {name}', flush=True)
            if self.trace:
                self.print_requests(start)

    def fail(self, name, reason, start):
        self.failed.append(name)
        print(f'FAIL {name}: {one_line(reason)}', flush=True)
        self.print_requests(start)

    def print_requests(self, start):
        for entry in self.log.entries[start:]:
            print(f'    > {describe_request(entry)}', flush=True)

    def expect_error(self, call, error_class, code):
        """`call` must raise `error_class` (a ccxt exception) whose message carries Binance `code`."""
        try:
            result = call()
        except error_class as error:
            assert str(code) in str(error), f'{type(error).__name__} without {code}: {one_line(error)}'
            return
        except ccxt.BaseError as error:
            raise AssertionError(f'expected {error_class.__name__} ({code}), got {type(error).__name__}: {one_line(error)}')
        raise AssertionError(f'expected {error_class.__name__} ({code}), got an answer: {one_line(result)}')


def rebased_urls(base_url):
    """ccxt's own API URLs for binanceusdm with the simulator's scheme and host in place of Binance's."""
    base_url = base_url.rstrip('/')
    template = ccxt.binanceusdm().urls['api']
    return {name: re.sub(r'^[a-z]+://[^/]+', base_url, url) for name, url in template.items() if isinstance(url, str)}


def make_exchange(base_url, api_key, secret, options=None):
    return ccxt.binanceusdm({
        'apiKey': api_key,
        'secret': secret,
        'urls': {'api': rebased_urls(base_url)},
        'options': {'fetchCurrencies': False, **(options or {})},
    })


def close_to(a, b, tolerance=1e-9):
    return a is not None and b is not None and abs(float(a) - float(b)) <= tolerance * max(1.0, abs(float(b)))


def iso(ms):
    return ccxt.Exchange.iso8601(ms) if ms is not None else None


def main():
    try:
        base_url = os.environ['SIM_URL']
        api_key = os.environ['SIM_API_KEY']
        secret = os.environ['SIM_API_SECRET']
    except KeyError as missing:
        print(f'FAIL setup: environment variable {missing} is not set (SIM_URL, SIM_API_KEY, SIM_API_SECRET)')
        return 2

    def deadline(_signum, _frame):
        print(f'FAIL deadline: the suite did not finish within {DEADLINE_SECONDS} s', flush=True)
        os._exit(1)

    signal.signal(signal.SIGALRM, deadline)
    signal.alarm(DEADLINE_SECONDS)

    log = RequestLog()
    ccxt_logger = logging.getLogger('ccxt.base.exchange')
    ccxt_logger.setLevel(logging.DEBUG)
    ccxt_logger.propagate = False
    ccxt_logger.addHandler(log)

    server_clock = os.environ.get('CONFORMANCE_SERVER_CLOCK') == '1'
    clock = "the server's clock (adjustForTimeDifference, diagnosis only)" if server_clock else 'the local clock'
    print(f'ccxt {ccxt.__version__} binanceusdm against {base_url}, signing with {clock}', flush=True)
    suite = Suite(log, os.environ.get('CONFORMANCE_TRACE') == '1')
    check = suite.check
    ex = make_exchange(base_url, api_key, secret, {'adjustForTimeDifference': True} if server_clock else None)
    run_id = str(int(time.time() * 1000))[-9:]
    started_ms = ex.milliseconds()
    state = {}

    # ---- markets and time -----------------------------------------------------------------------

    def xrp():
        """ccxt's name for XRPUSDT: XRP/USDT:USDT, or what ccxt made of an incomplete exchangeInfo
        (so that one naming gap does not hide every other)."""
        return state.get('xrp', SYMBOL)

    def btc():
        return state.get('btc', GENERATED)

    def load_markets():
        start = len(log.entries)
        markets = ex.load_markets()
        state['market_requests'] = log.entries[start:]
        for key, symbol, market_id in (('xrp', SYMBOL, 'XRPUSDT'), ('btc', GENERATED, 'BTCUSDT')):
            found = ex.markets_by_id.get(market_id) or []
            if symbol not in markets and found:
                state[key] = found[0]['symbol']
        assert SYMBOL in markets and GENERATED in markets, (
            f'no market {SYMBOL} / {GENERATED}; ccxt names XRPUSDT {xrp()!r} and BTCUSDT {btc()!r} '
            '(the checks below use these names)'
        )

    check('load_markets names XRPUSDT XRP/USDT:USDT', load_markets)

    def market_fields():
        found = ex.markets_by_id.get('XRPUSDT') if ex.markets_by_id else None
        market = need(found[0] if found else None, 'load_markets to list XRPUSDT')
        state['market'] = market
        assert (market['base'], market['quote'], market['settle']) == ('XRP', 'USDT', 'USDT'), (
            f"base {market['base']} quote {market['quote']} settle {market['settle']} (baseAsset {market['info'].get('baseAsset')!r})"
        )
        assert market['type'] == 'swap' and market['swap'] and market['linear'] and not market['inverse'], market['type']
        assert market['active'] is True, f"active {market['active']}"
        assert market['contractSize'] == 1, f"contractSize {market['contractSize']}"
        assert market['precision']['price'] == 0.0001, f"price precision {market['precision']['price']}"
        assert market['precision']['amount'] == 0.1, f"amount precision {market['precision']['amount']}"
        assert (market['limits']['amount']['min'] or 0) > 0, f"amount limits {market['limits']['amount']}"
        assert market['limits']['cost']['min'] == 5, f"cost limits {market['limits']['cost']}"
        assert market['created'] is not None, 'no onboardDate'

    check('load_markets XRPUSDT type, precision and limits', market_fields)

    def load_markets_fapi_only():
        requests = need(state.get('market_requests'), 'load_markets')
        paths = [urlsplit(entry['url']).path for entry in requests]
        assert paths, 'load_markets sent no request'
        assert all(path.startswith('/fapi/') for path in paths), f'load_markets left fapi: {paths}'

    check('load_markets asks fapi only', load_markets_fapi_only)

    def fetch_time():
        before = ex.milliseconds()
        server = ex.fetch_time()
        after = ex.milliseconds()
        assert isinstance(server, int), f'serverTime {server!r}'
        assert before - 1000 <= server <= after + 1000, (
            f'server time {iso(server)} is {server - after:+d} ms from the local clock {iso(after)}: '
            'ccxt signs with the local clock'
        )

    check('fetch_time', fetch_time)

    def ohlcv_rows_sane(rows, step):
        for earlier, later in zip(rows, rows[1:]):
            assert later[0] - earlier[0] == step, f'rows {iso(earlier[0])} and {iso(later[0])} are not {step} ms apart'
        for row in rows:
            _, open_, high, low, close, volume = row
            assert high >= max(open_, close) and low <= min(open_, close) and low > 0, f'row {row}'
            assert volume >= 0, f'row {row}'

    def fetch_ohlcv_since():
        forming = ex.milliseconds() // FIVE_MINUTES * FIVE_MINUTES
        since = forming - 50 * FIVE_MINUTES
        rows = ex.fetch_ohlcv(xrp(), '5m', since=since, limit=10)
        # ccxt drops rows before `since` itself: a server that ignores startTime shows as rows
        # that do not start at `since`.
        assert rows, f'no rows from {iso(since)}'
        assert rows[0][0] == since, f'first row opens at {iso(rows[0][0])}, asked from {iso(since)}'
        assert len(rows) == 10, f'{len(rows)} rows, asked for 10'
        ohlcv_rows_sane(rows, FIVE_MINUTES)

    check('fetch_ohlcv since+limit', fetch_ohlcv_since)

    def fetch_ohlcv_forming():
        before = ex.milliseconds()
        rows = ex.fetch_ohlcv(xrp(), '5m', limit=3)
        after = ex.milliseconds()
        assert len(rows) == 3, f'{len(rows)} rows, asked for 3'
        ohlcv_rows_sane(rows, FIVE_MINUTES)
        forming = {before // FIVE_MINUTES * FIVE_MINUTES, after // FIVE_MINUTES * FIVE_MINUTES}
        assert rows[-1][0] in forming, (
            f'newest row opens at {iso(rows[-1][0])}; the forming candle opens at {iso(max(forming))}'
        )
        state['last_close'] = rows[-1][4]

    check('fetch_ohlcv newest row is the forming candle', fetch_ohlcv_forming)

    def fetch_ohlcv_1m_generated():
        before = ex.milliseconds()
        rows = ex.fetch_ohlcv(btc(), '1m', limit=5)
        after = ex.milliseconds()
        assert len(rows) == 5, f'{len(rows)} rows, asked for 5'
        ohlcv_rows_sane(rows, ONE_MINUTE)
        forming = {before // ONE_MINUTE * ONE_MINUTE, after // ONE_MINUTE * ONE_MINUTE}
        assert rows[-1][0] in forming, f'newest row opens at {iso(rows[-1][0])}, not the forming minute'

    check('fetch_ohlcv 1m on a generated market', fetch_ohlcv_1m_generated)

    def fetch_ohlcv_1m_recorded():
        suite.expect_error(lambda: ex.fetch_ohlcv(xrp(), '1m', limit=5), ccxt.BadRequest, -1120)

    check('fetch_ohlcv 1m on the recorded 5m market -> -1120', fetch_ohlcv_1m_recorded)

    def fetch_ticker():
        ticker = ex.fetch_ticker(xrp())
        assert ticker['symbol'] == xrp(), ticker['symbol']
        last, high, low = ticker['last'], ticker['high'], ticker['low']
        assert last is not None and last > 0, f'last {last}'
        assert high is not None and low is not None and high >= last >= low > 0, f'high {high} last {last} low {low}'
        assert ticker['open'] is not None and ticker['open'] > 0, f"open {ticker['open']}"
        assert ticker['baseVolume'] is not None and ticker['baseVolume'] >= 0, f"baseVolume {ticker['baseVolume']}"
        assert ticker['timestamp'] is not None, 'no closeTime'
        state['last'] = last

    check('fetch_ticker', fetch_ticker)

    def fetch_order_book():
        book = ex.fetch_order_book(xrp(), limit=5)
        bids, asks = book['bids'], book['asks']
        assert bids and asks, f'bids {bids} asks {asks}'
        assert len(bids) <= 5 and len(asks) <= 5, f'{len(bids)} bids and {len(asks)} asks, asked for 5'
        assert bids == sorted(bids, key=lambda level: -level[0]), f'bids not descending: {bids}'
        assert asks == sorted(asks, key=lambda level: level[0]), f'asks not ascending: {asks}'
        assert bids[0][0] < asks[0][0], f'best bid {bids[0][0]} >= best ask {asks[0][0]}'
        assert all(level[1] > 0 for level in bids + asks), f'bids {bids} asks {asks}'
        assert isinstance(book['nonce'], int), f"lastUpdateId {book['nonce']!r}"

    check('fetch_order_book', fetch_order_book)

    def fetch_funding_rate():
        now = ex.milliseconds()
        rate = ex.fetch_funding_rate(xrp())
        assert rate['symbol'] == xrp(), rate['symbol']
        assert rate['markPrice'] is not None and rate['markPrice'] > 0, f"markPrice {rate['markPrice']}"
        assert rate['indexPrice'] is not None and rate['indexPrice'] > 0, f"indexPrice {rate['indexPrice']}"
        assert isinstance(rate['fundingRate'], float), f"lastFundingRate {rate['fundingRate']!r}"
        funding = rate['fundingTimestamp']
        assert funding is not None and now < funding <= now + 8 * 3_600_000, f'nextFundingTime {iso(funding)}'

    check('fetch_funding_rate', fetch_funding_rate)

    # ---- account ------------------------------------------------------------------------------

    def fetch_balance():
        balance = ex.fetch_balance()
        usdt = balance.get('USDT')
        assert usdt is not None, f"no USDT in {sorted(k for k in balance if k.isupper())}"
        total, free, used = usdt['total'], usdt['free'], usdt['used']
        assert total is not None and total > 0, f'total {total}'
        assert free is not None and 0 < free <= total, f'free {free} total {total}'
        assert used is not None and used >= 0, f'used {used}'

    check('fetch_balance', fetch_balance)

    def fetch_position_mode():
        mode = ex.fetch_position_mode(xrp())
        assert mode['hedged'] is False, f"dualSidePosition {mode['info']}"

    check('fetch_position_mode (one-way)', fetch_position_mode)

    def set_margin_mode_isolated():
        answer = ex.set_margin_mode('isolated', xrp())
        assert str(answer.get('code')) == '200', f'answer {answer}'

    check('set_margin_mode isolated', set_margin_mode_isolated)

    def set_margin_mode_cross():
        answer = ex.set_margin_mode('cross', xrp())
        assert str(answer.get('code')) == '200', f'answer {answer}'

    check('set_margin_mode cross', set_margin_mode_cross)

    def set_margin_mode_unchanged():
        # Binance answers -4046 "No need to change margin type."; ccxt raises MarginModeAlreadySet.
        suite.expect_error(lambda: ex.set_margin_mode('cross', xrp()), ccxt.MarginModeAlreadySet, -4046)

    check('set_margin_mode unchanged -> -4046', set_margin_mode_unchanged)

    def set_leverage():
        answer = ex.set_leverage(LEVERAGE, xrp())
        assert int(answer.get('leverage', 0)) == LEVERAGE, f'answer {answer}'
        assert answer.get('symbol') == 'XRPUSDT', f'answer {answer}'
        assert 'maxNotionalValue' in answer, f'answer {answer}'

    check('set_leverage', set_leverage)

    def fetch_positions_flat():
        positions = ex.fetch_positions([xrp()])
        assert isinstance(positions, list), f'{positions!r}'
        held = [p for p in positions if p['symbol'] == xrp() and (p['contracts'] or 0) > 0]
        assert not held, f'a position before any order: {held}'

    check('fetch_positions (flat)', fetch_positions_flat)

    # ---- orders -------------------------------------------------------------------------------

    def reference_price():
        """The market's price: the ticker's last, else the forming candle's close."""
        price = state.get('last') or state.get('last_close')
        if price is None:
            price = ex.fetch_ohlcv(xrp(), '5m', limit=1)[-1][4]
        return price

    def order_amount(price, notional=20.0):
        market = need(state.get('market'), 'load_markets')
        minimum = market['limits']['amount']['min'] or 0
        return float(ex.amount_to_precision(xrp(), max(notional / price, minimum)))

    def create_market_order():
        price = reference_price()
        amount = order_amount(price)
        client_id = f'ccxt-mkt-{run_id}'
        order = ex.create_order(xrp(), 'market', 'buy', amount, None, {'clientOrderId': client_id})
        state['market_order'] = order
        assert order['id'], f'no orderId: {order}'
        assert order['clientOrderId'] == client_id, f"clientOrderId {order['clientOrderId']}"
        assert order['symbol'] == xrp() and order['side'] == 'buy' and order['type'] == 'market', order['info']
        assert close_to(order['amount'], amount), f"origQty {order['amount']}, sent {amount}"
        assert order['status'] == 'closed', f"status {order['status']} ({order['info'].get('status')}), executedQty {order['info'].get('executedQty')}: a market order fills at once"
        assert close_to(order['filled'], amount), f"filled {order['filled']} of {amount}"
        assert order['average'] is not None and order['average'] > 0, f"avgPrice {order['average']}"
        assert abs(order['average'] - price) <= 0.05 * price, f"avgPrice {order['average']} far from the market {price}"

    check("create_order market buy, params={'clientOrderId'}", create_market_order)

    def fetch_positions_open():
        order = need(state.get('market_order'), 'the market order')
        positions = ex.fetch_positions([xrp()])
        mine = [p for p in positions if p['symbol'] == xrp()]
        assert len(mine) == 1, f'positions {[(p["symbol"], p["contracts"]) for p in positions]}'
        position = mine[0]
        state['position'] = position
        assert position['side'] == 'long', f"side {position['side']} (notional {position['info'].get('notional')})"
        assert close_to(position['contracts'], order['amount']), f"contracts {position['contracts']}, bought {order['amount']}"
        assert position['entryPrice'] is not None and position['entryPrice'] > 0, f"entryPrice {position['entryPrice']}"
        assert position['markPrice'] is not None and position['markPrice'] > 0, f"markPrice {position['markPrice']}"
        assert position['notional'] is not None and position['notional'] > 0, f"notional {position['notional']}"
        assert position['marginMode'] == 'cross', f"marginMode {position['marginMode']}"
        assert position['hedged'] is False, f"positionSide {position['info'].get('positionSide')}"

    check('fetch_positions (open long)', fetch_positions_open)

    def position_margin():
        position = need(state.get('position'), 'the open position')
        expected = position['notional'] / LEVERAGE
        margin = position['initialMargin']
        assert margin is not None and close_to(margin, expected, 0.02), (
            f"initialMargin {position['info'].get('initialMargin')}, notional {position['notional']} at leverage {LEVERAGE} is {expected:.6f}"
        )

    check('position initialMargin follows set_leverage', position_margin)

    def create_limit_order():
        price = float(ex.price_to_precision(xrp(), reference_price() * 0.7))
        amount = order_amount(price)
        client_id = f'ccxt-lmt-{run_id}'
        order = ex.create_order(xrp(), 'limit', 'buy', amount, price, {'newClientOrderId': client_id})
        state['limit_order'] = order
        assert order['id'], f'no orderId: {order}'
        assert order['clientOrderId'] == client_id, f"clientOrderId {order['clientOrderId']}"
        assert order['status'] == 'open', f"status {order['status']}"
        assert close_to(order['price'], price), f"price {order['price']}, sent {price}"
        assert close_to(order['amount'], amount), f"origQty {order['amount']}, sent {amount}"
        assert order['filled'] == 0, f"filled {order['filled']}"
        assert order['timeInForce'] == 'GTC', f"timeInForce {order['timeInForce']}"

    check("create_order limit buy far below, params={'newClientOrderId'}", create_limit_order)

    def fetch_order_by_id():
        placed = need(state.get('limit_order'), 'the limit order')
        order = ex.fetch_order(placed['id'], xrp())
        assert order['id'] == placed['id'], f"orderId {order['id']}"
        assert order['clientOrderId'] == placed['clientOrderId'], f"clientOrderId {order['clientOrderId']}"
        assert order['status'] == 'open', f"status {order['status']}"
        assert close_to(order['price'], placed['price']) and close_to(order['amount'], placed['amount']), order['info']
        assert order['timestamp'] is not None, f"no time: {order['info']}"
        assert close_to(order['remaining'], placed['amount']), f"remaining {order['remaining']}"

    check('fetch_order by id', fetch_order_by_id)

    def fetch_order_by_client_id():
        placed = need(state.get('limit_order'), 'the limit order')
        order = ex.fetch_order('', xrp(), {'clientOrderId': placed['clientOrderId']})
        assert order['id'] == placed['id'], f"orderId {order['id']}, placed {placed['id']}"

    check("fetch_order params={'clientOrderId'}", fetch_order_by_client_id)

    def fetch_open_orders():
        placed = need(state.get('limit_order'), 'the limit order')
        orders = ex.fetch_open_orders(xrp())
        ids = [order['id'] for order in orders]
        assert placed['id'] in ids, f'open orders {ids} lack {placed["id"]}'
        market_order = state.get('market_order')
        assert market_order is None or market_order['id'] not in ids, 'the filled market order is listed as open'
        assert all(order['status'] == 'open' for order in orders), [order['status'] for order in orders]

    check('fetch_open_orders', fetch_open_orders)

    def cancel_order_by_id():
        placed = need(state.get('limit_order'), 'the limit order')
        cancelled = ex.cancel_order(placed['id'], xrp())
        state['cancelled'] = True
        assert cancelled['id'] == placed['id'], f"orderId {cancelled['id']}"
        assert cancelled['status'] == 'canceled', f"status {cancelled['status']}"

    check('cancel_order by id', cancel_order_by_id)

    def after_cancel():
        placed = need(state.get('limit_order'), 'the limit order')
        need(state.get('cancelled'), 'cancel_order')
        order = ex.fetch_order(placed['id'], xrp())
        assert order['status'] == 'canceled', f"status {order['status']}"
        ids = [order['id'] for order in ex.fetch_open_orders(xrp())]
        assert placed['id'] not in ids, f'still open: {ids}'

    check('fetch_order / fetch_open_orders after cancel', after_cancel)

    def fetch_orders():
        market_order = need(state.get('market_order'), 'the market order')
        limit_order = need(state.get('limit_order'), 'the limit order')
        orders = {order['id']: order for order in ex.fetch_orders(xrp())}
        assert market_order['id'] in orders, f'allOrders {sorted(orders)} lacks the market order {market_order["id"]}'
        assert limit_order['id'] in orders, f'allOrders {sorted(orders)} lacks the limit order {limit_order["id"]}'
        assert orders[market_order['id']]['status'] == 'closed', f"market order {orders[market_order['id']]['status']}"
        assert orders[limit_order['id']]['status'] == 'canceled', f"limit order {orders[limit_order['id']]['status']}"

    check('fetch_orders (allOrders)', fetch_orders)

    def fetch_my_trades():
        market_order = need(state.get('market_order'), 'the market order')
        trades = [trade for trade in ex.fetch_my_trades(xrp()) if trade['order'] == market_order['id']]
        assert trades, f"no trade of order {market_order['id']}"
        state['trades'] = trades
        assert close_to(sum(trade['amount'] for trade in trades), market_order['amount']), [t['amount'] for t in trades]
        for trade in trades:
            assert trade['symbol'] == xrp() and trade['side'] == 'buy', trade['info']
            assert trade['price'] > 0 and trade['id'], trade['info']
            assert trade['takerOrMaker'] == 'taker', f"maker {trade['info'].get('maker')}"
            assert trade['fee'] is not None and trade['fee']['currency'] == 'USDT', f"fee {trade['fee']}"
            assert trade['timestamp'] is not None, trade['info']

    check('fetch_my_trades', fetch_my_trades)

    def fetch_ledger():
        trades = need(state.get('trades'), 'fetch_my_trades')
        entries = ex.fetch_ledger('USDT', since=started_ms - 60_000)
        trade_ids = {trade['id'] for trade in trades}
        commissions = [e for e in entries if e['info'].get('incomeType') == 'COMMISSION' and e['referenceId'] in trade_ids]
        assert commissions, f"no COMMISSION income for trades {sorted(trade_ids)}: {[(e['info'].get('incomeType'), e['referenceId']) for e in entries]}"
        fee = sum(trade['fee']['cost'] for trade in trades)
        paid = sum(e['amount'] for e in commissions)
        assert all(e['direction'] == 'out' and e['currency'] == 'USDT' for e in commissions), commissions
        assert close_to(paid, fee, 1e-6), f'COMMISSION income {paid}, trade commissions {fee}'

    check('fetch_ledger (income)', fetch_ledger)

    def cancel_all_orders():
        price = float(ex.price_to_precision(xrp(), reference_price() * 0.7))
        placed = ex.create_order(xrp(), 'limit', 'buy', order_amount(price), price)
        assert placed['clientOrderId'] and placed['clientOrderId'].startswith('x-'), f"ccxt's generated id {placed['clientOrderId']}"
        ex.cancel_all_orders(xrp())
        ids = [order['id'] for order in ex.fetch_open_orders(xrp())]
        assert not ids, f'open after cancel_all_orders: {ids}'

    check('cancel_all_orders', cancel_all_orders)

    def close_position():
        position = need(state.get('position'), 'the open position')
        order = ex.create_order(xrp(), 'market', 'sell', position['contracts'], None, {'reduceOnly': True})
        assert order['status'] == 'closed', f"status {order['status']}"
        assert order['reduceOnly'] is True, f"reduceOnly {order['reduceOnly']}"
        held = [p for p in ex.fetch_positions([xrp()]) if p['symbol'] == xrp() and (p['contracts'] or 0) > 0]
        assert not held, f'still held: {held}'

    check('create_order market sell reduceOnly closes the position', close_position)

    # ---- time in force, answer types, position side ---------------------------------------------

    def limit_in_force(tif, factor, client_id):
        price = float(ex.price_to_precision(xrp(), reference_price() * factor))
        amount = order_amount(price)
        params = {'timeInForce': tif, 'newClientOrderId': f'{client_id}-{run_id}'}
        return ex.create_order(xrp(), 'limit', 'buy', amount, price, params), price, amount

    def ioc_far_below_expires():
        order, _, _ = limit_in_force('IOC', 0.7, 'ccxt-ioc')
        assert order['status'] == 'expired', f"status {order['status']} ({order['info'].get('status')})"
        assert order['filled'] == 0, f"filled {order['filled']}"

    check('limit IOC far below the market expires unfilled', ioc_far_below_expires)

    def fok_far_below_is_refused():
        suite.expect_error(lambda: limit_in_force('FOK', 0.7, 'ccxt-fok'), ccxt.ExchangeError, -5021)

    check('limit FOK far below the market -> -5021', fok_far_below_is_refused)

    def gtx_crossing_is_refused():
        suite.expect_error(lambda: limit_in_force('GTX', 1.3, 'ccxt-gtx-x'), ccxt.ExchangeError, -5022)

    check('limit GTX (post-only) crossing the market -> -5022', gtx_crossing_is_refused)

    def gtx_far_below_rests():
        order, _, _ = limit_in_force('GTX', 0.7, 'ccxt-gtx')
        assert order['status'] == 'open', f"status {order['status']}"
        ex.cancel_order(order['id'], xrp())

    check('limit GTX far below the market rests', gtx_far_below_rests)

    def crossing_limit_fills_at_once():
        order, price, amount = limit_in_force('GTC', 1.3, 'ccxt-cross')
        assert order['status'] == 'closed', f"status {order['status']}: a crossing limit order takes at once"
        assert close_to(order['filled'], amount), f"filled {order['filled']} of {amount}"
        assert order['average'] <= price, f"avgPrice {order['average']} above the limit {price}"
        ex.create_order(xrp(), 'market', 'sell', amount, None, {'reduceOnly': True})

    check('limit GTC crossing the market fills at once, no worse than its price', crossing_limit_fills_at_once)

    def ack_is_the_default_answer():
        amount = order_amount(reference_price())
        client_id = f'ccxt-ack-{run_id}'
        answer = ex.fapiPrivatePostOrder({
            'symbol': 'XRPUSDT', 'side': 'BUY', 'type': 'MARKET',
            'quantity': ex.amount_to_precision(xrp(), amount), 'newClientOrderId': client_id,
        })
        assert answer['status'] == 'NEW' and answer['executedQty'] == '0', f'ACK answer {answer}'
        queried = ex.fetch_order(str(answer['orderId']), xrp())
        assert queried['status'] == 'closed', f"queried status {queried['status']}: it filled at once"
        ex.create_order(xrp(), 'market', 'sell', amount, None, {'reduceOnly': True})

    check('new order without newOrderRespType answers ACK (NEW), the fill shows on query', ack_is_the_default_answer)

    def hedge_side_is_refused():
        amount = order_amount(reference_price())
        suite.expect_error(
            lambda: ex.create_order(xrp(), 'market', 'buy', amount, None, {'positionSide': 'LONG'}),
            ccxt.ExchangeError,
            -4061,
        )

    check('positionSide LONG in one-way mode -> -4061', hedge_side_is_refused)

    def weeks_and_months():
        weeks = ex.fetch_ohlcv(xrp(), '1w', limit=3)
        assert weeks, 'no 1w rows'
        for row in weeks:
            assert time.gmtime(row[0] / 1000).tm_wday == 0, f'1w row opens on {iso(row[0])}, not a Monday'
        months = ex.fetch_ohlcv(xrp(), '1M', limit=2)
        assert months and all(time.gmtime(r[0] / 1000).tm_mday == 1 for r in months), f'1M rows {months}'

    check('fetch_ohlcv 1w opens on Mondays, 1M on the 1st', weeks_and_months)

    def klines_until():
        newest = ex.fetch_ohlcv(xrp(), '5m', limit=5)
        until = newest[2][0]
        rows = ex.fetch_ohlcv(xrp(), '5m', limit=2, params={'until': until})
        assert [r[0] for r in rows] == [newest[1][0], newest[2][0]], f'until {iso(until)}: {[iso(r[0]) for r in rows]}'

    check("fetch_ohlcv params={'until'} ends at that candle", klines_until)

    # ---- listen key (implicit API) ------------------------------------------------------------

    def listen_key_post():
        answer = ex.fapiPrivatePostListenKey()
        key = answer.get('listenKey')
        assert isinstance(key, str) and len(key) > 0, f'answer {answer}'
        state['listen_key'] = key

    check('listen key POST (fapiPrivatePostListenKey)', listen_key_post)

    def listen_key_put():
        key = need(state.get('listen_key'), 'a listen key')
        answer = ex.fapiPrivatePutListenKey()
        assert answer.get('listenKey', key) == key, f'answer {answer}, key {key}'

    check('listen key PUT (fapiPrivatePutListenKey)', listen_key_put)

    def listen_key_delete():
        need(state.get('listen_key'), 'a listen key')
        answer = ex.fapiPrivateDeleteListenKey()
        assert answer == {}, f'answer {answer}'
        state['listen_key_deleted'] = True

    check('listen key DELETE (fapiPrivateDeleteListenKey)', listen_key_delete)

    def listen_key_put_deleted():
        need(state.get('listen_key_deleted'), 'the DELETE')
        suite.expect_error(lambda: ex.fapiPrivatePutListenKey(), ccxt.AuthenticationError, -1125)

    check('listen key PUT after DELETE -> -1125', listen_key_put_deleted)

    # ---- errors -------------------------------------------------------------------------------

    # The signed calls below use fetch_open_orders (GET /fapi/v1/openOrders), which the simulator
    # has served from the start, so that they check authentication and not an endpoint's presence.

    def wrong_secret():
        wrong = make_exchange(base_url, api_key, secret + '-wrong')
        suite.expect_error(lambda: wrong.fetch_open_orders(xrp()), ccxt.AuthenticationError, -1022)

    check('wrong secret -> -1022', wrong_secret)

    def unknown_key():
        stranger = make_exchange(base_url, api_key + '-unknown', secret)
        suite.expect_error(lambda: stranger.fetch_open_orders(xrp()), ccxt.AuthenticationError, -2015)

    check('unknown API key -> -2015', unknown_key)

    def stale_timestamp():
        # ccxt signs with milliseconds() - options['timeDifference']: a clock 10 minutes behind.
        stale = make_exchange(base_url, api_key, secret, {'timeDifference': 600_000})
        suite.expect_error(lambda: stale.fetch_open_orders(xrp()), ccxt.InvalidNonce, -1021)

    check('stale timestamp (10 min old) -> -1021', stale_timestamp)

    def early_timestamp():
        ahead = ex.milliseconds() + 5_000
        suite.expect_error(
            lambda: ex.fapiPrivateGetOpenOrders({'symbol': 'XRPUSDT', 'timestamp': ahead}), ccxt.InvalidNonce, -1021
        )

    check('timestamp 5 s ahead -> -1021', early_timestamp)

    def unknown_symbol_public():
        suite.expect_error(
            lambda: ex.fapiPublicGetKlines({'symbol': 'NOSUCHUSDT', 'interval': '5m'}), ccxt.BadSymbol, -1121
        )

    check('unknown symbol, klines -> -1121', unknown_symbol_public)

    def unknown_symbol_signed():
        suite.expect_error(lambda: ex.fapiPrivateGetOpenOrders({'symbol': 'NOSUCHUSDT'}), ccxt.BadSymbol, -1121)

    check('unknown symbol, signed openOrders -> -1121', unknown_symbol_signed)

    def unknown_order_fetch():
        suite.expect_error(lambda: ex.fetch_order('987654321', xrp()), ccxt.OrderNotFound, -2013)

    check('fetch_order unknown id -> -2013', unknown_order_fetch)

    def unknown_order_cancel():
        suite.expect_error(lambda: ex.cancel_order('987654321', xrp()), ccxt.OrderNotFound, -2011)

    check('cancel_order unknown id -> -2011', unknown_order_cancel)

    total = len(suite.passed) + len(suite.failed)
    print(f'conformance: {len(suite.passed)} of {total} checks ok', flush=True)
    if suite.failed:
        print('failed: ' + '; '.join(suite.failed), flush=True)
    return 1 if suite.failed else 0


if __name__ == '__main__':
    sys.exit(main())
