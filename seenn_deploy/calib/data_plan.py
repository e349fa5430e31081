"""Which samples `calibrate` chooses on and which it scores on: never the same, never test by default.

The operating point is chosen on the validation slice the checkpoint's training held out of its
training split (recorded in the bundle at export), or on `--calib-data` for bundles without one,
and scored once on the test split. Each profile is stored in the bundle's calib/ folder under
the description of its samples, so a later run over the same samples reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from seenn_deploy.calib.profile import TimestepProfile
from seenn_deploy.data import ArrayDataset, check_labels, parse_data_spec
from seenn_deploy.data.spec import same_data
from seenn_deploy.data.validation import ValidationSlice, load_validation
from seenn_deploy.errors import UserError
from seenn_deploy.runtime.manifest import Manifest

CALIB_DIR = "calib"
CHOICE_PROFILE = "profile_choice.npz"
TEST_PROFILE = "profile_test.npz"


@dataclass(frozen=True)
class Samples:
    """A set of samples by description: a data spec and a split ("validation": the recorded slice)."""

    spec: str
    split: str
    limit: int | None = None
    validation: dict | None = None  # the ValidationSlice record, for split "validation"

    def describe(self) -> str:
        if self.split == "validation":
            vs = self.validation or {}
            where = f"{self.spec} validation slice ({100 * float(vs.get('fraction', 0)):g}% of train, seed {vs.get('seed')})"
        else:
            where = f"{self.spec} ({self.split})"
        return where + ("" if self.limit is None else f", first {self.limit}")

    def load(self, num_classes: int, classes: list[str], where: str) -> ArrayDataset:
        """The samples, their labels checked against the bundle's classes."""
        if self.split == "validation":
            data = load_validation(ValidationSlice.from_dict({**(self.validation or {}), "data": self.spec},
                                                             "the bundle's validation record"))
        else:
            data = parse_data_spec(self.spec).load(self.split)
        check_labels(data, num_classes, classes, where)
        return data if self.limit is None else data.subset(self.limit)


@dataclass(frozen=True)
class DataPlan:
    """choice: where the operating point is chosen; test: where it is scored (None: not scored)."""

    choice: Samples
    test: Samples | None
    chosen_on: str  # "validation", "calib-data", or "test" (optimistic: flagged everywhere)


def plan_data(manifest: Manifest, data_spec: str | None, calib_data: str | None, calib_split: str,
              limit: int | None, score_test: bool = True) -> DataPlan:
    """The two sample sets for a bundle, from the options and what the bundle records."""
    recorded = manifest.provenance.get("validation") or None
    trained_on = manifest.provenance.get("data") or None
    test_spec = data_spec or trained_on
    if calib_data is not None:
        choice = Samples(calib_data, calib_split, limit)
        same = test_spec is not None and same_data(calib_data, test_spec)
        chosen_on = "test" if same and calib_split in ("test", "all") else "calib-data"
    elif recorded is not None:
        spec = str(recorded.get("data") or trained_on)
        if data_spec is not None and not _loadable(spec) and _kind(data_spec) == _kind(spec):
            spec = data_spec  # the recorded path is gone (another folder): the same data set at --data's path
        choice = Samples(spec, "validation", limit, dict(recorded))
        chosen_on = "validation"
    else:
        raise UserError("the bundle records no validation slice (its checkpoint was trained without one, or it is a "
                        "foreign model): give --calib-data SPEC with held-out data the model was not trained on")
    test = None
    if score_test:
        if test_spec is None:
            raise UserError("the bundle does not record its data set: give --data SPEC to score the choice on its test "
                            "split, or --no-test")
        test = Samples(test_spec, "test", limit)
    return DataPlan(choice, test, chosen_on)


def _loadable(spec: str) -> bool:
    try:
        parse_data_spec(spec)
    except UserError:
        return False
    return True


def _kind(spec: str) -> str:
    return spec.strip().partition(":")[0]


def obtain_profile(path: Path, samples: Samples, fingerprint: str, manifest: Manifest, where: str,
                   make: Callable[[ArrayDataset, str], TimestepProfile]) -> TimestepProfile:
    """The stored profile at `path` when it was made of these samples on this bundle, else `make(data, key)`, stored."""
    key = samples.describe()
    if path.is_file():
        stored = TimestepProfile.load(path)
        if stored.fingerprint == fingerprint and stored.data == key:
            return stored
    data = samples.load(manifest.num_classes, manifest.classes, where)
    profile = make(data, key)
    profile.save(path)
    return profile
