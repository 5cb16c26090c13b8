"""One contender in a promotion race (run as a separate process by tests/lifecycle/test_promotion.py).

    python -m tests.lifecycle.promotion_race URI NAME VERSION MODE BARRIER_DIR ID PEERS

Waits until all PEERS contenders have written their ready file, then promotes VERSION (MODE: force = forced
with a reason, gated = with a passed verdict compared against the champion it saw before the barrier).
Exit status 0 = moved, 3 = refused because the champion changed meanwhile.
"""
import sys
import time
from pathlib import Path


def main(argv):
    uri, name, version, mode, barrier, ident, peers = argv
    from mlflow import MlflowClient

    from steps.evaluation import gate
    from steps.lifecycle import promotion

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    seen = promotion.alias_version(client, name, promotion.CHAMPION)
    verdict = gate.judge(0.9, champion_f1=0.85, champion_version=seen)
    Path(barrier, f"ready-{ident}").touch()
    deadline = time.monotonic() + 60
    while len(list(Path(barrier).glob("ready-*"))) < int(peers) and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        move = promotion.promote(client, name, int(version), force=mode == "force", verdict=verdict,
                                 reason=f"race contender {ident}", metaflow_run=f"RaceFlow/{ident}",
                                 user=f"contender-{ident}")
    except promotion.ChampionChanged as err:
        print(err)
        return 3
    print(f"moved v{move.from_version} -> v{move.to_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
