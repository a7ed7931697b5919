"""A numeric change without a bump of COMPUTE_VERSION fails here."""

import json

from pillm import tripwire
from pillm.version import COMPUTE_VERSION

REGENERATE = "python -m pillm.tripwire"


def test_numbers_match_the_compute_version():
    golden = json.loads(tripwire.GOLDEN.read_text())
    assert golden["compute_version"] == COMPUTE_VERSION, (
        f"{tripwire.GOLDEN.name} holds the numbers of compute version {golden['compute_version']}, the library "
        f"says {COMPUTE_VERSION}: regenerate it with `{REGENERATE}`")
    moved = tripwire.moved(golden["numbers"], tripwire.compute())
    assert not moved, ("numbers moved: bump COMPUTE_VERSION in pillm/version.py and regenerate with "
                       f"`{REGENERATE}`\n  " + "\n  ".join(moved))


def test_a_moved_number_is_reported():
    golden = {"baseline": {"test_loss": 5.0, "test_acc": 0.4}}
    assert tripwire.moved(golden, {"baseline": {"test_loss": 5.0, "test_acc": 0.4}}) == []
    assert tripwire.moved(golden, {"baseline": {"test_loss": 5.001, "test_acc": 0.4}}) == [
        "baseline.test_loss: stored 5.0, now 5.001"]
    assert len(tripwire.moved(golden, {})) == 2


def test_every_committed_result_records_the_compute_version():
    from pillm.run import REPO

    runs = sorted((REPO / "results").glob("*/*/runs/*/result.json"))
    assert runs
    stale = [str(p.relative_to(REPO)) for p in runs
             if json.loads(p.read_text()).get("compute_version") is None
             or json.loads((p.parent / "run.json").read_text()).get("compute_version") is None]
    assert not stale, f"{len(stale)} results without compute_version, e.g. {stale[:3]}"
