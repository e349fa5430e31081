"""SEENN-II training: the rewards, the exact-expectation gradient, a task whose right T is known, and
`train-policy` as a user drives it (install, export, resume, beta sweep, joint fine-tuning)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from seenn_deploy.data import ArrayDataset, Normalisation, parse_data_spec
from seenn_deploy.files import file_sha256
from seenn_deploy.snn.checkpoint import POLICY_WEIGHTS_FILE, WEIGHTS_FILE, load_checkpoint, load_policy, read_config
from seenn_deploy.train.policy_objective import Reward, correct_at, expected_reward, score_choices
from seenn_deploy.train.policy_trainer import PolicyConfig, PolicyData, PolicyTrainer, policy_choices


# -- the objective ---------------------------------------------------------------------------
def test_rewards_on_hand_cases():
    correct = torch.tensor([[False, True, True], [True, True, False]])
    r = Reward(beta=2.0).table(correct, [1, 2, 4])
    torch.testing.assert_close(r, torch.tensor([[-2.0, 0.25, 0.0625], [0.5, 0.25, -2.0]]))
    shifted = Reward(beta=0.5, shift=True).table(correct, [1, 2, 4])
    torch.testing.assert_close(shifted, torch.tensor([[-0.5, 0.5, 0.125], [1.0, 0.5, -0.5]]))
    # re-weighting: wrong at the first candidate weighs rate / (1 - rate); off by default and at rate 0 or 1
    balanced = Reward(beta=1.0, balance_first=True)
    torch.testing.assert_close(balanced.weights(correct, 0.8), torch.tensor([4.0, 1.0]))
    assert balanced.weights(correct, 1.0) is None and Reward(1.0).weights(correct, 0.8) is None
    score = score_choices(np.array([0, 1]), correct.numpy(), [1, 2, 4], Reward(beta=2.0))
    assert (score.accuracy, score.average_timesteps, score.reward, score.shares) == (0.5, 1.5, -0.875, [0.5, 0.5, 0.0])


def test_correct_at_judges_the_mean_of_the_first_t_outputs():
    # class 1 leads after step 1 and in the mean of steps 1-2; class 0 leads in the mean of steps 1-3
    logits = torch.tensor([[[0.0, 3.0]], [[2.0, 0.0]], [[2.0, 0.0]]])
    label = torch.tensor([0])
    assert correct_at(logits, label, [1, 2, 3]).tolist() == [[False, False, True]]
    assert correct_at(logits, label, [1, 3]).tolist() == [[False, True]]


def test_exact_expectation_gradient_is_the_mean_of_sampled_reinforce_gradients():
    torch.manual_seed(0)
    policy = torch.nn.Linear(5, 3)
    x = torch.randn(6, 5)
    rewards = Reward(beta=1.5).table(torch.rand(6, 3) < 0.6, [1, 2, 4])

    def grad(loss: torch.Tensor) -> torch.Tensor:
        policy.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    exact = grad(expected_reward(policy(x), rewards))
    log_v = torch.log_softmax(policy(x), dim=1)
    picks = torch.distributions.Categorical(logits=log_v.detach()).sample((400_000,))  # [S, B]: k ~ v per sample
    sampled = grad((rewards.gather(1, picks.T) * log_v.gather(1, picks.T)).mean(1).mean())  # mean of R_k grad log v_k
    assert torch.linalg.norm(sampled - exact) < 0.02 * torch.linalg.norm(exact)
    # and the test tells a wrong gradient apart: sum_k R_k grad log v_k (no v_k weight) is far off
    unweighted = grad((rewards * torch.log_softmax(policy(x), 1)).sum(1).mean())
    assert torch.linalg.norm(unweighted - exact) > 0.2 * torch.linalg.norm(exact)


def test_a_per_sample_baseline_leaves_the_exact_gradient_unchanged():
    # sum_k v_k (R_k - b) = J - b for any b constant in k: a baseline, which tames sampled REINFORCE, is a no-op
    # here, so the exact objective's conditioning cannot come from one (only from the rewards' scale)
    torch.manual_seed(1)
    policy = torch.nn.Linear(5, 4)
    x = torch.randn(8, 5)
    rewards = Reward(beta=4.0).table(torch.rand(8, 4) < 0.7, [1, 2, 3, 4])
    grads = []
    for r in (rewards, rewards - rewards.mean(1, keepdim=True), rewards - 3.0):
        policy.zero_grad()
        expected_reward(policy(x), r).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=1e-6)


# -- a task whose right T is known -------------------------------------------------------------
def quadrant_task(n: int, seed: int) -> tuple[ArrayDataset, np.ndarray, np.ndarray]:
    """8x8 images lit in quadrant g in {0, 1, 2}; the 'SNN' is right from candidate g on (and never before).

    With rewards 1/2^t and -beta, the best choice for a sample of group g is candidate g exactly.
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.2, (n, 1, 8, 8)).astype(np.float32)
    for i, g in enumerate(group):
        r, c = divmod(int(g), 2)
        x[i, 0, 4 * r: 4 * r + 4, 4 * c: 4 * c + 4] += 0.8
    data = ArrayDataset(x, rng.integers(0, 10, n), [str(i) for i in range(10)], "quadrants")
    return data, np.arange(3)[None, :] >= group[:, None], group


@pytest.fixture
def checkpoint(digits_checkpoint, tmp_path) -> Path:
    """A copy of the session's digits checkpoint that a test may write a policy into."""
    return Path(shutil.copytree(digits_checkpoint, tmp_path / "ckpt"))


def test_a_policy_learns_the_right_timesteps_of_a_synthetic_task(checkpoint):
    (fit, fit_correct, _), (val, val_correct, group) = quadrant_task(512, 0), quadrant_task(128, 1)
    config = PolicyConfig(checkpoint, "digits", beta=1.0, candidates=[1, 2, 4], epochs=4, width=8, batch_size=64)
    trainer = PolicyTrainer(config, log=lambda s: None, progress=False,
                            data=PolicyData(fit, val, fit_correct, val_correct), install=False)
    run = trainer.run()
    picks = policy_choices(trainer.policy, val, Normalisation.from_dict(read_config(checkpoint).normalisation))
    assert (picks == group).mean() >= 0.97, np.bincount(group * 3 + picks, minlength=9).reshape(3, 3)
    assert run.final["accuracy"] == 1.0 and not run.installed and read_config(checkpoint).policy is None



def test_the_snn_logits_cache_serves_the_same_rows_and_recomputes_changed_rows_of_the_same_name(digits_checkpoint,
                                                                                                   tmp_path):
    """An npz:FILE rewritten with other samples keeps its name and row count: the cache must not answer for it."""
    from seenn_deploy.train.policy_trainer import snn_logits, split_logits

    snn, ckpt = load_checkpoint(digits_checkpoint)
    norm = Normalisation.from_dict(ckpt.normalisation)
    test = parse_data_spec("digits").load("test")
    before = ArrayDataset(test.x[:8], test.y[:8], test.classes, "npz:rows.npz")
    after = ArrayDataset(test.x[8:16], test.y[:8], test.classes, "npz:rows.npz")  # same name, rows and labels
    cache = tmp_path / "policies" / "snn_logits_fit.npz"
    first = split_logits(snn, ckpt, tmp_path, "sha", "fit", before)
    np.testing.assert_array_equal(first, snn_logits(snn, before, norm, ckpt.timesteps))
    written = cache.stat().st_ino
    np.testing.assert_array_equal(split_logits(snn, ckpt, tmp_path, "sha", "fit", before), first)
    assert cache.stat().st_ino == written  # served from the cache, not made again (a write renames a new file in)
    changed = split_logits(snn, ckpt, tmp_path, "sha", "fit", after)
    assert not np.array_equal(changed, first)
    np.testing.assert_array_equal(changed, snn_logits(snn, after, norm, ckpt.timesteps))
    assert cache.stat().st_ino != written

# -- train-policy ------------------------------------------------------------------------------
def test_train_policy_installs_a_policy_that_exports_as_the_default_exit(run_cli, checkpoint, tmp_path):
    from seenn_deploy.export.exporter import export_checkpoint
    from seenn_deploy.runtime import OrtExecutor, Policy, Runtime

    snn_sha = file_sha256(checkpoint / WEIGHTS_FILE)
    report = tmp_path / "policy.json"
    result = run_cli("train-policy", checkpoint, "--data", "digits", "--beta", "2", "--candidates", "1,2,4",
                     "--epochs", "2", "--width", "8", "--downsample", "2", "--quiet", "--json", report)
    assert result.code == 0, result.err
    assert result.err == ""
    assert "epoch 2/2" in result.out and "installed" in result.out and "the SNN alone on the validation slice: T=1:" in result.out
    spec = read_config(checkpoint).policy
    assert spec["candidates"] == [1, 2, 4] and spec["beta"] == 2.0 and spec["arch"] == "policy_resnet8"
    assert spec["model"]["width"] == 8 and spec["model"]["downsample"] == 2
    assert spec["metrics"]["validation"]["samples"] == 144  # the checkpoint's validation slice, never test
    assert file_sha256(checkpoint / WEIGHTS_FILE) == snn_sha  # the SNN is left as it was
    runs = json.loads(report.read_text())["runs"]
    assert [r["installed"] for r in runs] == [True] and len(runs[0]["history"]) == 2

    policy, candidates = load_policy(checkpoint, read_config(checkpoint))
    manifest = export_checkpoint(checkpoint, tmp_path / "b")
    assert manifest.exit.kind == "policy" and manifest.exit.candidates == candidates == [1, 2, 4]
    assert manifest.provenance["policy"]["sha256"] == file_sha256(checkpoint / POLICY_WEIGHTS_FILE)
    with Runtime.from_bundle(tmp_path / "b") as runtime:
        assert isinstance(runtime.exit, Policy)  # no --exit needed
        x = runtime.prepare(parse_data_spec("digits").load("test").x[:32])
    scores = OrtExecutor(tmp_path / "b" / "policy.onnx").run({"x": x})["scores"]  # the downsampled policy exports
    with torch.no_grad():
        np.testing.assert_allclose(scores, policy(torch.from_numpy(x)).numpy(), atol=1e-5)

    again = run_cli("train-policy", checkpoint, "--data", "digits", "--beta", "2", "--epochs", "2", "--quiet")
    assert "--resume" in again.error()
    other = run_cli("train-policy", checkpoint, "--data", "digits", "--beta", "2", "--candidates", "1,2,4",
                    "--epochs", "3", "--width", "8", "--downsample", "2", "--quiet", "--resume")
    assert "epochs: 2 there, 3 now" in other.error()


def test_an_interrupted_run_resumes_to_the_same_policy(checkpoint, tmp_path):
    shutil.copytree(checkpoint, tmp_path / "whole")
    config = PolicyConfig(checkpoint, "digits", beta=1.0, epochs=2, width=8)

    def stop_after_first_epoch(line: str) -> None:
        if "epoch 1/2" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        PolicyTrainer(config, log=stop_after_first_epoch, progress=False).run()
    assert read_config(checkpoint).policy is None  # nothing installed by an unfinished run
    lines: list[str] = []
    config.resume = True
    PolicyTrainer(config, log=lines.append, progress=False).run()
    assert any("resuming at epoch 2" in line for line in lines) and not any("epoch 1/2" in line for line in lines)
    PolicyTrainer(PolicyConfig(tmp_path / "whole", "digits", beta=1.0, epochs=2, width=8),
                  log=lambda s: None, progress=False).run()
    resumed = load_policy(checkpoint, read_config(checkpoint))[0].state_dict()
    whole = load_policy(tmp_path / "whole", read_config(tmp_path / "whole"))[0].state_dict()
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_a_beta_sweep_trains_one_policy_per_beta_and_installs_none(run_cli, checkpoint, tmp_path):
    report = tmp_path / "sweep.json"
    args = ["train-policy", checkpoint, "--data", "digits", "--epochs", "1", "--width", "8", "--quiet"]
    result = run_cli(*args, "--beta", "0.5,4", "--json", report)
    assert result.code == 0, result.err
    runs = json.loads(report.read_text())["runs"]
    assert [(r["beta"], r["installed"]) for r in runs] == [(0.5, False), (4.0, False)]
    assert all(r["validation"]["samples"] == 144 for r in runs)
    assert "beta 0.5" in result.out and "beta 4" in result.out and read_config(checkpoint).policy is None
    # the report: every beta on the validation slice and once on test, beside SEENN-I, with the policy's cost
    sweep = json.loads(report.read_text())["report"]
    assert set(sweep["splits"]) == {"validation", "test"}
    test_split = parse_data_spec("digits").load("test")
    assert sweep["splits"]["test"]["samples"] == len(test_split) and sweep["splits"]["validation"]["samples"] == 144
    for split in sweep["splits"].values():
        assert [p["beta"] for p in split["policies"]] == [0.5, 4.0] and split["seenn_front"]
        for point in split["policies"]:
            assert sum(point["shares"]) == pytest.approx(1.0) and point["combined_front"]
            assert point["effective_timesteps"] == pytest.approx(point["avg_timesteps"] + sweep["cost"]["share_of_step"])
            assert 0 < point["policy_share_of_energy"] < 1 and point["policy_macs"] == sweep["cost"]["macs"]
    val_points = {p["beta"]: p for p in sweep["splits"]["validation"]["policies"]}
    assert {b: r["validation"]["accuracy"] for b, r in zip((0.5, 4.0), runs)} == {
        b: p["accuracy"] for b, p in val_points.items()}  # the trainer's own validation figures, recomputed
    assert sweep["cost"]["macs"] > 0 and (checkpoint / "policies" / "report.json").is_file()
    assert (checkpoint / "policies" / "front.png").is_file()
    installed = run_cli(*args, "--beta", "4", "--resume")
    assert installed.code == 0, installed.err
    assert "already finished" in installed.out and read_config(checkpoint).policy["beta"] == 4.0


def test_joint_fine_tuning_writes_a_new_checkpoint_and_leaves_the_old_one(run_cli, checkpoint, tmp_path):
    before = file_sha256(checkpoint / WEIGHTS_FILE)
    args = ["train-policy", checkpoint, "--data", "digits", "--beta", "1", "--epochs", "1", "--width", "8",
            "--joint-epochs", "1", "--quiet"]
    assert "--out" in run_cli(*args).error()
    result = run_cli(*args, "--out", tmp_path / "tuned")
    assert result.code == 0, result.err
    assert "epoch 2/2 joint" in result.out
    assert file_sha256(checkpoint / WEIGHTS_FILE) == before and read_config(checkpoint).policy is None
    tuned, config = load_checkpoint(tmp_path / "tuned")
    original, _ = load_checkpoint(checkpoint)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), original.state_dict().values()))
    assert config.policy["candidates"] == [1, 2, 3, 4] and "policy_joint_fine_tuning" in config.training
    assert config.validation == read_config(checkpoint).validation  # the same held-out rows


@pytest.mark.parametrize("args, message", [
    (["--beta", "1", "--candidates", "2,1"], "increasing timesteps in 1..4"),
    (["--beta", "1", "--candidates", "1,9"], "increasing timesteps in 1..4"),
    (["--beta", "-1"], "--beta must be a finite number >= 0"),
    (["--beta", "one"], "comma-separated list of numbers"),
    (["--beta", "1,1"], "distinct"),
    (["--beta", "1", "--resume"], "holds no policy run for beta 1"),
    (["--beta", "1", "--data", "npz:/nowhere.npz"], "nowhere.npz"),
])
def test_train_policy_refuses_bad_settings_before_any_work(run_cli, checkpoint, args, message):
    data = [] if "--data" in args else ["--data", "digits"]
    result = run_cli("train-policy", checkpoint, *data, *args, "--quiet")
    assert message in result.error()
    assert not (checkpoint / "policies").exists()


def test_a_policy_install_cut_short_is_refused_not_run(checkpoint):
    from safetensors.torch import save_file

    from seenn_deploy.errors import UserError
    from seenn_deploy.snn.zoo import create_model

    (fit, fit_correct, _), (val, val_correct, _) = quadrant_task(64, 0), quadrant_task(32, 1)
    config = PolicyConfig(checkpoint, "digits", beta=1.0, candidates=[1, 2, 4], epochs=1, width=4)
    PolicyTrainer(config, log=lambda s: None, progress=False, data=PolicyData(fit, val, fit_correct, val_correct)).run()
    spec = read_config(checkpoint).policy
    assert spec["weights_sha256"] == file_sha256(checkpoint / POLICY_WEIGHTS_FILE)
    assert load_policy(checkpoint, read_config(checkpoint)) is not None
    # another install stopped between its two writes: its weights are there, config.json is still the old one
    torch.manual_seed(1)
    other = create_model("policy_resnet8", **spec["model"])
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(checkpoint / POLICY_WEIGHTS_FILE))
    with pytest.raises(UserError, match="cut short.*--resume"):
        load_policy(checkpoint, read_config(checkpoint))


def test_train_policy_under_torchrun_is_refused_before_any_work(run_cli, checkpoint, monkeypatch):
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    result = run_cli("train-policy", checkpoint, "--data", "digits", "--beta", "1", "--quiet")
    assert result.code == 2 and "start it without torchrun" in result.err, result.err
    assert not (checkpoint / "policies").exists()
