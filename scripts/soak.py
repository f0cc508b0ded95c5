"""``make soak``: the randomized differential test for as long as asked, under CPU load.

Runs episodes (tests/differential.py) on each PostgreSQL version: a pipeline with random
batch settings, a daemon and K seeded histories per episode, faults between transactions,
then target and source compared history by history. Prints every failure with its seed and
the command that replays it, and a summary per version: histories, faults, failures, time,
and which features and faults the failing histories had.

    python scripts/soak.py --histories-total 300 --pg 15,18        # the default
    python scripts/soak.py --duration 600 --features all,-unique_swap_tx --faults kill
    python scripts/soak.py --pg 15 --episode 202 ...                # replay (printed on failure)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from tests import differential, histories  # noqa: E402
from tests.plugins import pg  # noqa: E402
from tests.plugins.proxy import TcpProxy  # noqa: E402
from tests.support import toml_dumps  # noqa: E402


def _busy() -> None:
    while True:
        pass


def _faults(spec: str) -> list[str]:
    if spec in ("all", ""):
        return list(differential.FAULTS)
    if spec == "none":
        return []
    kinds = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [k for k in kinds if k not in differential.FAULTS]
    if unknown:
        raise SystemExit(f"unknown faults {unknown} (known: {', '.join(differential.FAULTS)})")
    return kinds


def _features(spec: str) -> frozenset[str]:
    if spec == "none":
        return frozenset()
    try:
        return histories.parse_features(spec)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


class Episode:
    """One database pair, the daemon and the proxies of one episode; cleaned up after."""

    def __init__(self, pair: pg.ClusterPair, workdir: Path) -> None:
        self.dbs = pg.DbPair("s_" + uuid.uuid4().hex[:12], pair)
        self.workdir = workdir
        self.daemons: list[pg.DaemonProcess] = []
        self.proxies: list[TcpProxy] = []
        for cluster in (pair.src, pair.dst):
            with psycopg.connect(cluster.conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbs.name)))

    def start_daemon(self, config: dict[str, Any]) -> pg.DaemonProcess:
        path = self.workdir / f"{self.dbs.name}.toml"
        path.write_text(toml_dumps(config))
        d = pg.DaemonProcess(path, self.workdir / f"{self.dbs.name}.log", {"PYTHONPATH": str(ROOT)})
        self.daemons.append(d)
        res = pg.run_cli("setup", "-c", str(path), env={"PYTHONPATH": str(ROOT)})
        if res.returncode != 0:
            raise RuntimeError(f"setup failed:\n{res.stdout}\n{res.stderr}")
        return d.start()

    def make_proxy(self, port: int) -> TcpProxy:
        p = TcpProxy(port)
        self.proxies.append(p)
        return p

    def close(self) -> None:
        for d in self.daemons:
            if d.alive():
                d.kill()
        for p in self.proxies:
            p.close()
        for cluster in (self.dbs.pair.src, self.dbs.pair.dst):
            try:
                pg._drop_database(cluster, self.dbs.name)
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the results
                print(f"  (could not drop {self.dbs.name}: {exc})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    majors = [i.major for i in pg.INSTALLS]
    ap.add_argument("--pg", default=",".join(map(str, majors)), help="versions, e.g. 15,18")
    ap.add_argument("--histories-total", type=int, default=300, help="per version (default 300)")
    ap.add_argument("--episodes", type=int, help="per version, instead of --histories-total")
    ap.add_argument("--duration", type=float, help="seconds per version, instead of counts")
    ap.add_argument("--episode", type=int, help="replay this one episode seed")
    ap.add_argument("--seed-base", type=int, help="first episode seed (default: from the clock)")
    ap.add_argument("--histories", type=int, default=10, help="histories per episode")
    ap.add_argument("--transactions", type=int, default=30, help="streamed per history")
    ap.add_argument("--features", default="all", help="e.g. all,-unique_swap_tx,-truncate_fk")
    ap.add_argument("--faults", default="all", help=f"all, none or of {differential.FAULTS}")
    ap.add_argument("--fault-count", default="1,3", help="faults per episode: min,max")
    ap.add_argument("--snapshot", default="truncate,merge", help="first-copy modes to draw from")
    ap.add_argument("--hog", type=int, default=os.cpu_count() or 2, help="busy-loop processes")
    ap.add_argument("--catchup-timeout", type=float, default=180)
    ap.add_argument("--keep-logs", action="store_true", help="keep passing episodes' logs too")
    args = ap.parse_args(argv)

    features, faults = _features(args.features), _faults(args.faults)
    lo, hi = (int(x) for x in args.fault_count.split(","))
    snapshots = [s.strip() for s in args.snapshot.split(",") if s.strip()]
    versions = [int(v) for v in args.pg.split(",") if v.strip()]
    missing = [v for v in versions if v not in majors]
    if missing:
        raise SystemExit(f"PostgreSQL {missing} not found (have {majors})")
    base = args.seed_base if args.seed_base is not None else int(time.time()) % 1_000_000 * 100
    logdir = Path(tempfile.mkdtemp(prefix="soak-"))
    print(
        f"soak: pg {versions}, features={args.features}, faults={faults}, "
        f"snapshot={snapshots}, hog={args.hog}, seeds from {base}, logs in {logdir}",
        flush=True,
    )
    hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.hog)]
    for h in hogs:
        h.start()
    summary: list[str] = []
    failed_total = 0
    interrupted = False
    try:
        for major in versions:
            if interrupted:
                break
            pair = pg.get_pair(major)
            t0 = time.monotonic()
            done_h = 0
            episodes = 0
            faults_done: Counter[str] = Counter()
            failures: list[str] = []
            feat_runs: Counter[str] = Counter()
            feat_fail: Counter[str] = Counter()
            fault_runs: Counter[str] = Counter()
            fault_fail: Counter[str] = Counter()
            while True:
                if args.episode is not None:
                    if episodes:
                        break
                    seed = args.episode
                elif args.duration is not None:
                    if time.monotonic() - t0 >= args.duration:
                        break
                    seed = base + episodes
                elif args.episodes is not None:
                    if episodes >= args.episodes:
                        break
                    seed = base + episodes
                else:
                    if done_h >= args.histories_total:
                        break
                    seed = base + episodes
                plan = differential.plan_episode(
                    seed,
                    features=features,
                    faults=faults,
                    histories_per_episode=args.histories,
                    transactions=args.transactions,
                    fault_count=(lo, hi),
                    snapshots=snapshots,
                )
                ep = Episode(pair, logdir)
                try:
                    result = differential.run_episode(
                        plan,
                        ep.dbs,
                        ep.start_daemon,
                        ep.make_proxy,
                        catchup_timeout=args.catchup_timeout,
                    )
                except KeyboardInterrupt:
                    print(f"interrupted in episode {seed}: summary of the episodes done")
                    interrupted = True
                    break
                finally:
                    ep.close()
                episodes += 1
                done_h += len(result.results)
                faults_done.update(result.faults_done)
                kinds = set(result.faults_done)
                for k in kinds:
                    fault_runs[k] += 1
                    if not result.ok:
                        fault_fail[k] += 1
                for r in result.results:
                    for f in r.ops:
                        feat_runs[f] += 1
                        if not r.ok:
                            feat_fail[f] += 1
                print(result.report(), flush=True)
                if result.ok:
                    if not args.keep_logs:
                        for d in ep.daemons:
                            d.log_path.unlink(missing_ok=True)
                            d.config_path.unlink(missing_ok=True)
                else:
                    print(f"  log: {ep.daemons[0].log_path}", flush=True)
                    failures += [f"episode {seed} history {r.seed}" for r in result.failures]
                    if not result.failures:
                        failures.append(f"episode {seed} (daemon exited {result.daemon_exit})")
            wall = time.monotonic() - t0
            failed_total += len(failures)
            lines = [
                f"pg{major}: {done_h} histories in {episodes} episodes, {wall:.0f}s, "
                f"faults injected {sum(faults_done.values())} {dict(faults_done)}, "
                f"{len(failures)} failed",
                "  features (histories failed/run): "
                + ", ".join(f"{f} {feat_fail[f]}/{feat_runs[f]}" for f in sorted(feat_runs)),
                "  faults (episodes failed/run): "
                + ", ".join(f"{f} {fault_fail[f]}/{fault_runs[f]}" for f in sorted(fault_runs)),
            ]
            lines += [f"  FAILED {x}" for x in failures[:30]]
            summary += lines
            print("\n".join(lines), flush=True)
    finally:
        for h in hogs:
            h.terminate()
            h.join(5)
        pg.pytest_sessionfinish(None)  # type: ignore[arg-type]  # stop and remove the clusters
        if failed_total == 0 and not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    print("\n== soak summary ==\n" + "\n".join(summary))
    return 1 if failed_total else 0


if __name__ == "__main__":
    sys.exit(main())
