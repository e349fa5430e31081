"""`calibrate`: choose the exit of a bundle on held-out data and score it on test."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

from seenn_deploy.cli.group import cli
from seenn_deploy.cli.options import (
    COUNT, FiniteFloat, batch_size_option, echo, emit_json, json_option, samples_option,
)


@cli.command("calibrate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="The data set: its test split scores the choice; the bundle's validation slice of it is where the "
                   "choice is made. Default: the data the bundle's checkpoint was trained on.")
@click.option("--calib-data", default=None, metavar="SPEC",
              help="Choose on this data instead of the bundle's validation slice (bundles without one): held-out "
                   "samples the model was not trained on.")
@click.option("--calib-split", type=click.Choice(["train", "test", "all"]), default="train", show_default=True,
              help="With --calib-data: its split to choose on.")
@samples_option("Use the first N samples of each set.")
@click.option("--target-drop", type=FiniteFloat(min=0), default=None, metavar="PTS",
              help="Fewest average timesteps with accuracy within PTS percentage points of Fixed(T_max).")
@click.option("--target-timesteps", type=FiniteFloat(min=0), default=None, metavar="T",
              help="Most accurate within T average timesteps.")
@click.option("--alpha", type=FiniteFloat(0, 1, max_open=True), default=None,
              help="Use this alpha and report it (0 <= alpha < 1).")
@click.option("--t-cap", type=COUNT, default=None, help="With --alpha: exit after this many steps at the latest.")
@click.option("--metric", type=click.Choice(["confidence", "entropy"]), default="confidence", show_default=True)
@click.option("--backend", type=click.Choice(["ort", "torch"]), default="ort", show_default=True)
@batch_size_option()
@click.option("--no-test", is_flag=True, help="Do not score the choice on the test split.")
@click.option("--no-write", is_flag=True, help="Report only; leave the bundle's exit settings as they are.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots (they need the `plots` extra).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@json_option
def calibrate_cmd(bundle, data_spec, calib_data, calib_split, samples, target_drop, target_timesteps, alpha, t_cap,
                  metric, backend, batch_size, no_test, no_write, no_plots, quiet, json_path) -> None:
    """Choose the exit (alpha, timestep cap) on held-out data by an exact sweep, score it once on test, write it."""
    from seenn_deploy.calib.calibrate import Target, check_writable_metric
    from seenn_deploy.calib.data_plan import CALIB_DIR, plan_data
    from seenn_deploy.files import FOLDER, bundle_lock, check_writable
    from seenn_deploy.runtime.bundle import bundle_path
    from seenn_deploy.runtime.manifest import read_manifest

    manifest = read_manifest(bundle)
    target = Target(target_drop, target_timesteps, alpha, t_cap)
    target.check(manifest.timesteps)
    if target.given and not no_write:
        check_writable_metric(metric)
    plan = plan_data(manifest, data_spec, calib_data, calib_split, samples, score_test=not no_test)
    folder = check_writable(bundle_path(bundle, CALIB_DIR, "the calib folder"), "BUNDLE", FOLDER)
    with bundle_lock(bundle, "calibrate"):
        report, written = _calibrate(Path(bundle), folder, plan, target, metric, backend, batch_size, not no_write,
                                     not no_plots, quiet)
    _print_report(bundle, report, written)
    emit_json(json_path, report.to_dict())


def _calibrate(bundle: Path, folder: Path, plan, target, metric: str, backend: str, batch_size: int, write: bool,
               plots: bool, quiet: bool):
    """Profile (or reuse the profiles), choose, plot and write, under the bundle's lock -> (report, written exit)."""
    from seenn_deploy.calib.calibrate import analyse, write_exit, write_report
    from seenn_deploy.calib.data_plan import CALIB_DIR, CHOICE_PROFILE, TEST_PROFILE, obtain_profile
    from seenn_deploy.calib.profile import bundle_fingerprint, profile_bundle
    from seenn_deploy.data.progress import progress_enabled
    from seenn_deploy.runtime.api import Runtime
    from seenn_deploy.runtime.manifest import read_manifest

    manifest = read_manifest(bundle)  # again, under the lock: another writer may have changed it
    folder.mkdir(exist_ok=True)
    fingerprint = bundle_fingerprint(bundle, manifest)
    runtime: Runtime | None = None

    def make(data, key):
        nonlocal runtime
        if runtime is None:
            runtime = Runtime.from_bundle(bundle, backend=backend, exit="fixed:1")
        runtime.prepare(data.x[:1])  # shape and dtype check with the runtime's message
        with click.progressbar(length=len(data), label=f"profiling {key}", file=sys.stderr, hidden=quiet) as bar:
            return profile_bundle(bundle, manifest, runtime.step, runtime.encoder, data.x, data.y, key, batch_size,
                                  bar.update)

    where = f"bundle {bundle}"
    try:
        with progress_enabled(not quiet):
            choice = obtain_profile(folder / CHOICE_PROFILE, plan.choice, fingerprint, manifest, where, make)
            test = obtain_profile(folder / TEST_PROFILE, plan.test, fingerprint, manifest, where, make) if plan.test else None
    finally:
        if runtime is not None:
            runtime.close()
    report, chosen = analyse(choice, test, metric, target, plan.chosen_on)
    if "policy" in manifest.graphs:  # SEENN-II: the policy's own exit and policy+confidence, swept on its caps
        from seenn_deploy.calib.calibrate import policy_analysis

        caps = [_policy_caps(bundle, backend, samples, manifest, where, batch_size) if samples else None
                for samples in (plan.choice, plan.test if test is not None else None)]
        report.policy = policy_analysis(choice, test, caps[0], caps[1], metric, target)
        report.policy["cost"], why = _policy_cost(bundle, backend, plan.choice, manifest, where)
        if why:
            report.warnings.append(why)
    if plots:
        from seenn_deploy.calib.plots import make_plots

        made, note = make_plots(folder, bundle.name, report.to_dict(), choice.scores[metric], choice.correct())
        report.plots = [f"{CALIB_DIR}/{p.name}" for p in made]
        if note:
            report.warnings.append(note)
    write_report(folder, report)
    combined = (report.policy or {}).get("chosen") or {}
    written = (write_exit(bundle, manifest, chosen, metric, choice.data, combined.get("alpha"))
               if chosen is not None and write else None)
    return report, written


def _policy_caps(bundle: Path, backend: str, samples, manifest, where: str, batch_size: int) -> np.ndarray:
    """The T the bundle's policy graph picks for each of `samples`, in the profile's row order (the runtime's
    own decision code: Policy.budgets)."""
    from seenn_deploy.runtime.api import Runtime

    data = samples.load(manifest.num_classes, manifest.classes, where)
    with Runtime.from_bundle(bundle, backend=backend, exit="policy") as runtime:
        return np.concatenate([runtime.exit.budgets(runtime.prepare(data.x[i: i + batch_size]), manifest.timesteps)
                               for i in range(0, len(data), batch_size)])


def _policy_cost(bundle: Path, backend: str, samples, manifest, where: str) -> tuple[dict | None, str | None]:
    """The policy's MACs against one SNN timestep and its time per sample on this backend (profile/policy_cost.py),
    or (None, why not)."""
    from seenn_deploy.profile.policy_cost import bench_policy_cost
    from seenn_deploy.runtime.api import Runtime

    data = samples.load(manifest.num_classes, manifest.classes, where)
    with Runtime.from_bundle(bundle, backend=backend, exit="policy") as runtime:
        return bench_policy_cost(runtime, data.x, None)


def _fixed_line(fixed: list[dict]) -> str:
    """Fixed(T) accuracies; past 8 steps only T = 1, 2, 4, 8, ... and T_max, to fit a line."""
    last = fixed[-1]["timesteps"]
    keep = [f for f in fixed if last <= 8 or f["timesteps"] == last or f["timesteps"] & (f["timesteps"] - 1) == 0]
    return "  ".join(f"T={f['timesteps']}: {_percent(f['accuracy'])}" for f in keep)


def _verdicts(rows: list[dict]) -> str:
    """'dominates T=2-64; equal T=1': each verdict with the Fixed(T) points it holds for, as ranges."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(row["verdict"], []).append(row["timesteps"])
    return "; ".join(f"{verdict} T={_ranges(ts)}" for verdict, ts in groups.items())


def _ranges(values: list[int]) -> str:
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _print_report(bundle: Path, report, written: str | None) -> None:
    choice, chosen, test = report.choice, report.chosen, report.test
    echo(f"{bundle}: metric {report.metric}, T_max {report.timesteps}")
    echo(f"  chosen on {choice['data']}: {choice['samples']} samples")
    echo(f"  fixed T:  {_fixed_line(choice['fixed'])}")
    echo(f"  AET {choice['aet']:.3f}   empirical AET {choice['empirical_aet']:.3f}   exact sweep over "
               f"{choice['points']} (alpha, T_cap) points in {1000 * choice['sweep_seconds']:.1f} ms, "
               f"{len(choice['front'])} on the Pareto front")
    shown = max(max(np.flatnonzero(row["exit_shares"]), default=0) for row in choice["table"]) + 1  # no all-zero tail
    echo(f"  exit                      accuracy  avg T   exits per t (%){'' if shown == report.timesteps else f', t = 1..{shown}'}")
    for row in choice["table"]:
        shares = " ".join(f"{100 * s:5.1f}" for s in row["exit_shares"][:shown])
        echo(f"  {row['exit']:<24}  {_percent(row['accuracy']):>7}  {row['avg_timesteps']:5.3f}   {shares}")
    if chosen is not None:
        echo(f"  chosen {chosen['exit']}: {_percent(chosen['accuracy'])} at {chosen['avg_timesteps']:.3f} average "
                   f"timesteps ({report.chosen_on})")
        echo(f"    vs Fixed(T): {_verdicts(chosen['vs_fixed'])}")
    if test is not None:
        full = test["fixed"][-1]
        echo(f"  on test, {test['data']}: {test['samples']} samples, scored once")
        echo(f"  fixed T:  {_fixed_line(test['fixed'])}")
        if "chosen" in test:
            c = test["chosen"]
            drop = 100 * (full["accuracy"] - c["accuracy"])
            echo(f"  chosen {chosen['exit']}: {_percent(c['accuracy'])} at {c['avg_timesteps']:.3f} average timesteps, "
                       f"{drop:.2f} points below Fixed({full['timesteps']}) (on the choice set: {_percent(chosen['accuracy'])} "
                       f"at {chosen['avg_timesteps']:.3f})")
    if report.policy is not None:
        _print_policy(report.policy, report.chosen_on)
    for warning in report.warnings:
        echo(f"  warning: {warning}")
    if written is not None:
        echo(f"  written to {bundle}/manifest.json (exit {written})")
    for plot in report.plots:
        echo(f"  plot: {bundle}/{plot}")
    if chosen is None:
        echo("  no target given: --target-drop PTS, --target-timesteps T or --alpha A choose and write an exit")


def _print_policy(policy: dict, chosen_on: str) -> None:
    """SEENN-II lines: the plain policy exit and policy+confidence:alpha, on the choice set and on test."""
    plain = policy["policy"]
    echo(f"  SEENN-II policy exit: {_percent(plain['accuracy'])} at {plain['avg_timesteps']:.3f} average timesteps "
         f"({chosen_on}); policy+confidence front: {len(policy['front'])} points")
    if policy.get("chosen"):
        c = policy["chosen"]
        echo(f"  chosen {c['exit']}: {_percent(c['accuracy'])} at {c['avg_timesteps']:.3f} average timesteps")
    elif policy.get("unreachable"):
        echo(f"  policy+confidence: {policy['unreachable']}")
    if policy.get("cost"):
        from seenn_deploy.profile.policy_cost import policy_cost_line

        echo(f"  {policy_cost_line(policy['cost'])}")
    test = policy.get("test")
    if test:
        echo(f"  on test: policy {_percent(test['policy']['accuracy'])} at {test['policy']['avg_timesteps']:.3f}"
             + (f"; policy+confidence:{test['chosen']['alpha']:.6g} {_percent(test['chosen']['accuracy'])} at "
                f"{test['chosen']['avg_timesteps']:.3f}" if "chosen" in test else ""))
