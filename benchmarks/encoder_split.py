"""The encoder split, measured: one checkpoint exported with and without it, run through the runtime.

Prints time(split) / time(no split) for Fixed(T_max) and for the early exit, at batch 1 and 64
(ORT CPU, slots), each the median of back-to-back pairs with quartiles; above 1 means the split
is slower. It also prints what `--encoder-split auto` weighs: the encoder's MACs per sample
against the extra bytes the step graph reads per sample per step when split.

    python benchmarks/encoder_split.py CHECKPOINT --data fashion-mnist:../shared/data --alpha 0.6
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from runtime_early_exit import paired, timed

from seenn_deploy.data import parse_data_spec
from seenn_deploy.export.exporter import ExportOptions, export_checkpoint
from seenn_deploy.runtime import Confidence, Fixed, Runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--alpha", type=float, required=True, help="Confidence threshold of the early exit.")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch-1-samples", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    data = parse_data_spec(args.data).load("test").subset(args.samples)
    out = Path(tempfile.mkdtemp(prefix="encoder-split-"))
    manifests = {mode: export_checkpoint(args.checkpoint, out / mode, ExportOptions(encoder_split=mode))
                 for mode in ("on", "off")}
    decision = manifests["on"].provenance["encoder_split"]
    print(f"encoder: {decision['encoder_macs']:,} MACs per sample; split reads {decision['extra_bytes_per_step']:,} "
          f"more bytes per sample per step ({decision['encoder_macs'] / max(decision['extra_bytes_per_step'], 1):.2f} "
          f"MACs per byte; auto splits from {decision['threshold_macs_per_byte']:g})")
    figures = {"decision": decision}
    for batch, n in ((1, args.batch_1_samples), (64, args.samples)):
        x = data.x[:n]
        runtimes = {mode: Runtime.from_bundle(out / mode, batch=batch, threads=args.threads) for mode in ("on", "off")}
        try:
            t_max = runtimes["on"].manifest.timesteps
            for name, policy in (("fixed", Fixed(t_max)), ("early exit", Confidence(args.alpha))):
                for rt in runtimes.values():
                    rt.exit = policy
                ratio = paired(lambda: timed(lambda: runtimes["on"].infer(x)), lambda: timed(lambda: runtimes["off"].infer(x)),
                               args.pairs)
                figures[f"batch {batch}, {name}"] = ratio
                print(f"batch {batch:>2}, {name:<10}: split / no split time {ratio['median']:.3f} "
                      f"(quartiles {ratio['q1']:.3f}-{ratio['q3']:.3f}, {ratio['pairs']} pairs)")
        finally:
            for rt in runtimes.values():
                rt.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
