#!/usr/bin/env python3
"""Request weight of the event model against the REST-sync design, on `bulwark sim` (issue 14).

Runs `bulwark sim` and `bulwark run` twice on the same seed: once with each account's user data
stream (`[exchange] user_data_stream = true`: decisions read the account book) and once without
(`false`: every decision reads its account by REST, the design the streams replace). Both runs
count the request weight the simulator charged (`/sim/stats.weight_charged_total`) over the same
steady-state window of candle closes, after a warm-up that holds the start-ups (reconciliation,
stream connects). The simulator's weight limit is set far above Binance's 2,400 a minute so that
neither design is throttled and the figures are what each design asks for; the report puts them
next to Binance's limit. The decisions of the two runs are then compared candle by candle.

    scripts/bench-weight.py                  # 1,000 users on 20 symbols -> docs/BENCHMARKS-streams.md
    scripts/bench-weight.py --users 200 --symbols 10 --out /tmp/weight.md

Needs a release build (`cargo build --release --locked`, done here). Scratch data and both runs'
logs are kept in target/bench-weight/. Not part of the test suite; takes a few minutes.
"""

import argparse
import datetime
import json
import os
import pathlib
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE_MS = 300_000
# The paper market's start index (src/exchange/paper/market.rs START_INDEX): the origin of
# candle indices is this many 5-minute candles before the candle forming at start.
START_INDEX = 12_000
BINANCE_WEIGHT_LIMIT_PER_MINUTE = 2_400
# `[exchange] start_up_weight_per_minute`'s default: half of the limit for starting traders.
COLD_START_WEIGHT_PER_MINUTE = 1_200


def key(user):
    return f"bench-{user}-api-key"


def secret(user):
    return f"bench-{user}-api-secret"


def write_sim_config(path, data_dir, users, symbols, candle_interval_ms, weight_limit=1_000_000):
    lines = [
        "[sim]",
        'listen = "127.0.0.1:0"',
        f'data_dir = "{data_dir}"',
        'coinglass_api_key = "bench-cg-key"',
        f"weight_limit_per_minute = {weight_limit}",
    ]
    for i in range(users):
        user = f"u{i:04}"
        lines += ["[[sim.accounts]]", f'user = "{user}"', f'api_key = "{key(user)}"', f'api_secret = "{secret(user)}"']
    lines += ["[exchange.paper]", f"candle_interval_ms = {candle_interval_ms}", "seed = 11"]
    for s in range(symbols):
        lines += [
            "[[exchange.paper.random_walk]]",
            f'symbol = "S{s:02}USDT"',
            f"start_price = {10 + 7 * s}",
            "volatility_pct = 0.4",
            "tick_size = 0.001",
            "step_size = 0.1",
            "min_notional = 5",
        ]
    path.write_text("\n".join(lines) + "\n")


def write_bulwark_config(path, data_dir, url, users, symbols, streams, weight_limit=1_000_000, connects_per_second=1000,
                         start_up_weight_per_minute=1_000_000):
    lines = [
        "[server]",
        f'data_dir = "{data_dir}/data"',
        f'log_dir = "{data_dir}/logs"',
        "[supervisor]",
        "backoff_ms_initial = 100",
        "backoff_ms_max = 1000",
        "[exchange]",
        'kind = "binance"',
        f'base_url = "{url}"',
        "recv_window_ms = 5000",
        "timeout_ms = 10000",
        "poll_interval_ms = 50",
        f"weight_limit_per_minute = {weight_limit}",
        f"user_data_stream = {'true' if streams else 'false'}",
        f"stream_connects_per_second = {connects_per_second}",
        f"start_up_weight_per_minute = {start_up_weight_per_minute}",
        "[risk]",
        "max_open_positions = 3",
        "max_position_notional_usdt = 5000",
    ]
    for i in range(users):
        user = f"u{i:04}"
        lines += [
            "[[users]]",
            f'id = "{user}"',
            f'api_key_env = "BENCH_KEY_{i}"',
            f'api_secret_env = "BENCH_SECRET_{i}"',
            "[[users.strategies]]",
            f'symbol = "S{i % symbols:02}USDT"',
            'timeframe = "5m"',
            'strategy = "ema_crossover"',
            "params = { fast = 3, slow = 8 }",
            "position_size_usdt = 50",
        ]
    path.write_text("\n".join(lines) + "\n")


def get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def one_run(binary, work, name, users, symbols, candle_interval_ms, seconds, warm_up_closes, seed):
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    sim_config = run_dir / "sim.toml"
    write_sim_config(sim_config, run_dir / "sim-data", users, symbols, candle_interval_ms)
    sim_log = open(run_dir / "sim.log", "w")
    sim = subprocess.Popen(
        [binary, "sim", "--listen", "127.0.0.1:0", "--seed", str(seed), "--config", sim_config],
        stdout=subprocess.PIPE, stderr=sim_log, text=True,
    )
    try:
        first = sim.stdout.readline().strip()
        if not first.startswith("listening on "):
            raise SystemExit(f"bench-weight: bulwark sim said {first!r}")
        url = first.removeprefix("listening on ")
        origin_market_ms = (get(url + "/sim/stats")["market_time_ms"] // BASE_MS) * BASE_MS - START_INDEX * BASE_MS
        config = run_dir / "bulwark.toml"
        write_bulwark_config(config, run_dir, url, users, symbols, streams=(name == "streams"))
        env = dict(os.environ)
        for i in range(users):
            env[f"BENCH_KEY_{i}"] = key(f"u{i:04}")
            env[f"BENCH_SECRET_{i}"] = secret(f"u{i:04}")
        bulwark_log = open(run_dir / "bulwark.log", "w")
        started = time.monotonic()
        bulwark = subprocess.Popen(
            [binary, "run", "--duration", str(seconds), "--config", config],
            stdout=subprocess.DEVNULL, stderr=bulwark_log, env=env,
        )
        samples = []
        while bulwark.poll() is None:
            stats = get(url + "/sim/stats")
            samples.append({
                "at_s": time.monotonic() - started,
                "market_time_ms": stats["market_time_ms"],
                "weight": stats["weight_charged_total"],
                "requests": stats["requests"],
                "connections": stats["user_stream_connections"],
            })
            time.sleep(0.25)
        if bulwark.returncode != 0:
            raise SystemExit(f"bench-weight: bulwark run ({name}) exited {bulwark.returncode}; see {run_dir}/bulwark.log")
    finally:
        sim.terminate()
        sim.wait()
    first_close = samples[0]["market_time_ms"] // BASE_MS
    window = [s for s in samples if s["market_time_ms"] // BASE_MS >= first_close + warm_up_closes]
    # Whole closes only: from the first sample after a close to the last sample before one.
    begin = window[0]
    end = [s for s in window if s["market_time_ms"] // BASE_MS > begin["market_time_ms"] // BASE_MS][-1]
    closes = end["market_time_ms"] // BASE_MS - begin["market_time_ms"] // BASE_MS
    weight = end["weight"] - begin["weight"]
    requests = {
        endpoint: end["requests"].get(endpoint, 0) - begin["requests"].get(endpoint, 0)
        for endpoint in end["requests"]
        if end["requests"].get(endpoint, 0) != begin["requests"].get(endpoint, 0)
    }
    database = run_dir / "data" / "bulwark.db"
    return {
        "name": name,
        "closes": closes,
        "weight": weight,
        "weight_per_close": weight / max(closes, 1),
        "requests_per_close": {e: n / max(closes, 1) for e, n in sorted(requests.items())},
        "window_market_ms": (begin["market_time_ms"], end["market_time_ms"]),
        "origin_market_ms": origin_market_ms,
        "connections": samples[-1]["connections"],
        "database": database,
        "total_s": samples[-1]["at_s"],
    }


def start_sim(binary, run_dir, users, symbols, candle_interval_ms, seed, weight_limit):
    sim_config = run_dir / "sim.toml"
    write_sim_config(sim_config, run_dir / "sim-data", users, symbols, candle_interval_ms, weight_limit)
    sim = subprocess.Popen(
        [binary, "sim", "--listen", "127.0.0.1:0", "--seed", str(seed), "--config", sim_config],
        stdout=subprocess.PIPE, stderr=open(run_dir / "sim.log", "w"), text=True,
    )
    first = sim.stdout.readline().strip()
    if not first.startswith("listening on "):
        sim.terminate()
        raise SystemExit(f"bench-weight: bulwark sim said {first!r}")
    return sim, first.removeprefix("listening on ")


def ready_times(log_path):
    """user -> wall time (s since the epoch) of its first `trader ready` line."""
    ready = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if "trader ready" not in line or " user=" not in line:
            continue
        stamp = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        user = line.split(" user=")[1].split()[0]
        ready.setdefault(user, stamp)
    return ready


def cold_start_run(binary, work, users, symbols, candle_interval_ms, seed, limit_s):
    """500 users (by default) start at once against Binance's real weight limit: when is each
    ready, and does each decide on the first candle that closes after it is?"""
    run_dir = work / "cold-start"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    sim, url = start_sim(binary, run_dir, users, symbols, candle_interval_ms, seed, BINANCE_WEIGHT_LIMIT_PER_MINUTE)
    try:
        config = run_dir / "bulwark.toml"
        write_bulwark_config(config, run_dir, url, users, symbols, streams=True,
                             weight_limit=BINANCE_WEIGHT_LIMIT_PER_MINUTE, connects_per_second=5,
                             start_up_weight_per_minute=COLD_START_WEIGHT_PER_MINUTE)
        env = dict(os.environ)
        for i in range(users):
            env[f"BENCH_KEY_{i}"] = key(f"u{i:04}")
            env[f"BENCH_SECRET_{i}"] = secret(f"u{i:04}")
        log_path = run_dir / "bulwark.log"
        started_wall = time.time()
        bulwark = subprocess.Popen(
            [binary, "run", "--duration", str(limit_s), "--config", config],
            stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env,
        )
        samples, all_ready_at = [], None
        while bulwark.poll() is None:
            stats = get(url + "/sim/stats")
            samples.append((time.time(), stats["market_time_ms"], stats["weight_charged_total"]))
            if all_ready_at is None and len(ready_times(log_path)) >= users:
                all_ready_at = time.time()
            # Every user ready, then three more closes: enough to see each decide.
            if all_ready_at is not None and time.time() - all_ready_at > 3.5 * candle_interval_ms / 1000:
                bulwark.terminate()
                bulwark.wait()
                break
            time.sleep(0.5)
    finally:
        sim.terminate()
        sim.wait()
    ready = ready_times(log_path)
    connection = sqlite3.connect(f"file:{run_dir / 'data' / 'bulwark.db'}?mode=ro", uri=True)
    first_decided = dict(connection.execute(
        "SELECT user_id, MIN(candle_close_ms) FROM decisions WHERE candle_close_ms IS NOT NULL GROUP BY user_id"
    ).fetchall())
    # What each user's first decision was (a REST read refused for weight shows as blocked).
    first_outcomes = {}
    for (outcome,) in connection.execute(
        "SELECT d.outcome FROM decisions d JOIN (SELECT user_id, MIN(id) AS id FROM decisions "
        "WHERE candle_close_ms IS NOT NULL GROUP BY user_id) f ON d.id = f.id"
    ).fetchall():
        first_outcomes[outcome] = first_outcomes.get(outcome, 0) + 1
    connection.close()

    # When each candle close was first decided on by anyone (wall ms): the close came before it.
    connection = sqlite3.connect(f"file:{run_dir / 'data' / 'bulwark.db'}?mode=ro", uri=True)
    first_decided_wall_ms = dict(connection.execute(
        "SELECT candle_close_ms, MIN(decided_at_ms) FROM decisions WHERE candle_close_ms IS NOT NULL "
        "GROUP BY candle_close_ms"
    ).fetchall())
    connection.close()

    on_first_close, late = 0, []
    for user, ready_wall in ready.items():
        # The first close after the user was ready: the first one nobody had decided on before
        # (counted against bulwark when a close came just before ready and was decided just after).
        after = [close for close, wall_ms in first_decided_wall_ms.items() if wall_ms > ready_wall * 1000]
        first_close_after_ms = min(after) if after else None
        decided = first_decided.get(user)
        if decided is not None and (first_close_after_ms is None or decided <= first_close_after_ms):
            on_first_close += 1
        else:
            late.append((user, decided, first_close_after_ms))
    ready_walls = sorted(ready.values())
    weight_at_ready = [weight for wall, _, weight in samples if all_ready_at and wall <= all_ready_at]
    return {
        "users": users,
        "ready": len(ready),
        "all_ready_s": (ready_walls[-1] - started_wall) if len(ready) >= users else None,
        "half_ready_s": ready_walls[len(ready_walls) // 2] - started_wall if ready_walls else None,
        "weight_to_ready": weight_at_ready[-1] if weight_at_ready else None,
        "on_first_close": on_first_close,
        "late": late[:10],
        "late_count": len(late),
        "first_outcomes": dict(sorted(first_outcomes.items())),
    }


def decisions_by_candle(run, first_index, last_index):
    """(user, candle index) -> outcome, for the candles in [first_index, last_index]."""
    connection = sqlite3.connect(f"file:{run['database']}?mode=ro", uri=True)
    rows = connection.execute(
        "SELECT user_id, candle_close_ms, outcome FROM decisions WHERE candle_close_ms IS NOT NULL"
    ).fetchall()
    connection.close()
    out = {}
    for user, close_ms, outcome in rows:
        index = (close_ms + 1 - run["origin_market_ms"]) // BASE_MS
        if first_index <= index <= last_index:
            out[(user, index)] = outcome
    return out


def first_decided_candle(run):
    """user -> the index of the first candle the user decided on (its trading history starts there)."""
    connection = sqlite3.connect(f"file:{run['database']}?mode=ro", uri=True)
    rows = connection.execute(
        "SELECT user_id, MIN(candle_close_ms) FROM decisions WHERE candle_close_ms IS NOT NULL GROUP BY user_id"
    ).fetchall()
    connection.close()
    return {user: (close_ms + 1 - run["origin_market_ms"]) // BASE_MS for user, close_ms in rows}


def candle_range(run):
    begin, end = run["window_market_ms"]
    return ((begin - run["origin_market_ms"]) // BASE_MS, (end - run["origin_market_ms"]) // BASE_MS - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--candle-interval-ms", type=int, default=6000)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--warm-up-closes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS-streams.md"))
    parser.add_argument("--cold-start-users", type=int, default=500,
                        help="users of the cold start at Binance's weight limit (0: skip it)")
    parser.add_argument("--cold-start-limit-s", type=int, default=1200)
    parser.add_argument("--cold-start-candle-interval-ms", type=int, default=30_000,
                        help="slower than the steady-state runs: 20 feeds' klines every 6 s would take half the "
                             "budget, where real 5-minute candles take almost none")
    parser.add_argument("--cold-start-only", action="store_true",
                        help="measure only the cold start; replace its section of --out and keep the rest")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "bulwark"], cwd=ROOT, check=True)
    binary = ROOT / "target" / "release" / "bulwark"
    work = ROOT / "target" / "bench-weight"
    work.mkdir(parents=True, exist_ok=True)
    load_before = pathlib.Path("/proc/loadavg").read_text().strip()
    if args.cold_start_only:
        print(f"bench-weight: cold start of {args.cold_start_users} users at {BINANCE_WEIGHT_LIMIT_PER_MINUTE:,} "
              "weight a minute", file=sys.stderr)
        cold = cold_start_run(binary, work, args.cold_start_users, args.symbols, args.cold_start_candle_interval_ms,
                              args.seed, args.cold_start_limit_s)
        kept = pathlib.Path(args.out).read_text().split("## Cold start")[0].rstrip("\n").split("\n")
        write_report(args, kept + [""] + cold_start_lines(args, cold))
        return
    runs = []
    for name in ["streams", "rest-sync"]:
        print(f"bench-weight: {name}: {args.users} users on {args.symbols} symbols for {args.seconds} s", file=sys.stderr)
        runs.append(one_run(binary, work, name, args.users, args.symbols, args.candle_interval_ms, args.seconds,
                            args.warm_up_closes, args.seed))
    streams, rest = runs
    cold = None
    if args.cold_start_users:
        print(f"bench-weight: cold start of {args.cold_start_users} users at {BINANCE_WEIGHT_LIMIT_PER_MINUTE:,} "
              "weight a minute", file=sys.stderr)
        cold = cold_start_run(binary, work, args.cold_start_users, args.symbols, args.cold_start_candle_interval_ms,
                              args.seed, args.cold_start_limit_s)
    first = max(candle_range(streams)[0], candle_range(rest)[0])
    last = min(candle_range(streams)[1], candle_range(rest)[1])
    on_streams = decisions_by_candle(streams, first, last)
    on_rest = decisions_by_candle(rest, first, last)
    both = set(on_streams) & set(on_rest)
    same = sum(1 for k in both if on_streams[k] == on_rest[k])
    differing = sorted(k for k in both if on_streams[k] != on_rest[k])[:10]
    # A user's decisions depend on its history (positions, losing streaks), which starts with the
    # first candle it decided on: when its start-up finished differs between the runs (the REST
    # design's start-up is slower), so may everything after. Users that started on the same candle
    # in both runs show whether the two ways of reading the account decide alike.
    starts_streams, starts_rest = first_decided_candle(streams), first_decided_candle(rest)
    same_start = {u for u in starts_streams if starts_rest.get(u) == starts_streams[u]}
    both_same_start = {k for k in both if k[0] in same_start}
    same_same_start = sum(1 for k in both_same_start if on_streams[k] == on_rest[k])
    differing_same_start = sorted(k for k in both_same_start if on_streams[k] != on_rest[k])[:10]
    share = 100.0 * streams["weight_per_close"] / max(rest["weight_per_close"], 1e-9)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    per_minute = lambda run: run["weight_per_close"] * 60_000 / (5 * 60_000)  # noqa: E731 (5-minute candles)

    lines = [
        "# Request weight: account streams against REST sync",
        "",
        f"Written by `scripts/bench-weight.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"commit `{commit}`{' (with uncommitted changes)' if dirty else ''}; `/proc/loadavg` before: {load_before}. "
        "Every number was measured in that run.",
        "",
        f"**Setup.** `bulwark sim` (seed {args.seed}) with {args.users} accounts and {args.symbols} random-walk symbols, "
        f"one 5-minute candle per {args.candle_interval_ms} ms of wall time; `bulwark run` with {args.users} users, "
        f"user *i* on symbol *i* mod {args.symbols} (EMA crossover 3/8, $50 positions), {args.seconds} s per run. "
        "The two runs differ only in `[exchange] user_data_stream`: `true` (each account's user data stream; "
        "decisions read the account book) and `false` (the REST-sync design: every decision reads position, "
        "symbol rules and balance by REST); both take candles from the market streams (`market_stream` and "
        "`trade_stream` on, their defaults), so that the whale guard reads the same large-trade flow in both. "
        "The simulator's weight limit is far above Binance's, so neither run is "
        "throttled and each spends what its design asks for; weight is Binance's per endpoint as the simulator "
        f"charges it (`/sim/stats.weight_charged_total`), over the closes after the first {args.warm_up_closes} "
        "(start-up reconciliation and stream connects excluded).",
        "",
        "| figure | streams | REST sync |",
        "|---|---|---|",
        f"| candle closes in the window | {streams['closes']} | {rest['closes']} |",
        f"| request weight per close | {streams['weight_per_close']:,.1f} | {rest['weight_per_close']:,.1f} |",
        f"| … per minute on real 5-minute candles (Binance allows {BINANCE_WEIGHT_LIMIT_PER_MINUTE:,} per IP) | "
        f"{per_minute(streams):,.1f} | {per_minute(rest):,.1f} |",
        f"| user data stream connections opened | {streams['connections']} | {rest['connections']} |",
    ]
    endpoints = sorted(set(streams["requests_per_close"]) | set(rest["requests_per_close"]))
    for endpoint in endpoints:
        lines.append(
            f"| `{endpoint}` requests per close | {streams['requests_per_close'].get(endpoint, 0):,.1f} | "
            f"{rest['requests_per_close'].get(endpoint, 0):,.1f} |"
        )
    lines += [
        "",
        f"**Streams spend {share:.2f} % of the REST-sync design's weight per close** "
        f"(target ≤ 2 %: {'met' if share <= 2.0 else 'missed'}).",
        "",
        f"**Same decisions.** Over candles {first}–{last} (indices from the market's origin), {len(both):,} "
        f"(user, candle) decisions were made in both runs; {same:,} had the same outcome "
        f"({100.0 * same / max(len(both), 1):.2f} %). Decided in only one run: "
        f"{len(set(on_streams) ^ set(on_rest)):,}. "
        + (f"First differing: {differing}." if differing else ""),
        "",
        f"Of the {len(starts_streams):,} users, {len(same_start):,} made their first decision on the same candle "
        f"in both runs (the others finished their start-up a candle apart, so their positions and losing streaks "
        f"differ from then on). Their {len(both_same_start):,} (user, candle) decisions in the window: "
        f"{same_same_start:,} the same ({100.0 * same_same_start / max(len(both_same_start), 1):.2f} %)"
        + (f"; differing: {differing_same_start}." if differing_same_start else "."),
        "",
    ]
    if cold:
        lines += cold_start_lines(args, cold)
    write_report(args, lines)


def write_report(args, lines):
    pathlib.Path(args.out).write_text("\n".join(lines))
    print(f"bench-weight: wrote {args.out}", file=sys.stderr)


def cold_start_lines(args, cold):
    ready_text = (f"every user was ready {cold['all_ready_s']:.0f} s after the start (half of them after "
                  f"{cold['half_ready_s']:.0f} s), having spent {cold['weight_to_ready']:,} weight"
                  if cold["all_ready_s"] is not None else
                  f"only {cold['ready']:,} of {cold['users']:,} users were ready within {args.cold_start_limit_s} s")
    per_thousand = (f" — about {cold['all_ready_s'] * 1000 / cold['users'] / 60:.1f} minutes per 1,000 users "
                    "per IP" if cold["all_ready_s"] is not None else "")
    return [
        "## Cold start at Binance's weight limit",
        "",
        f"{cold['users']:,} users start at once against `bulwark sim` with Binance's {BINANCE_WEIGHT_LIMIT_PER_MINUTE:,} "
        "weight a minute (the client's own budget the same; start-ups within the default "
        f"`start_up_weight_per_minute = {COLD_START_WEIGHT_PER_MINUTE:,}`), account streams on, 5 stream connects a "
        "second, "
        f"{args.symbols} symbols, one 5-minute candle per {args.cold_start_candle_interval_ms:,} ms, fresh accounts and "
        f"database: {ready_text}{per_thousand} (raising `start_up_weight_per_minute` shortens it, taking weight from "
        "the running traders). "
        f"{cold['on_first_close']:,} of the {cold['ready']:,} ready users decided on the first candle that closed "
        f"after they were ready (first decisions by outcome: {cold['first_outcomes']})"
        + (f"; the others ({cold['late_count']:,}; user, first decided close, first close after ready): "
           f"{cold['late']}." if cold["late_count"] else "."),
        "",
    ]


if __name__ == "__main__":
    main()
