"""Ask a running `seenn-deploy serve` (or any Triton serving a `seenn-deploy triton` repository) about a few
samples, over HTTP or gRPC, with NVIDIA's tritonclient (pip install 'tritonclient[http,grpc]').

    seenn-deploy serve model.seenn                      # in one terminal: HTTP 8000, gRPC 8001, metrics 8002
    python examples/triton_client.py --data digits      # in another: HTTP
    python examples/triton_client.py --data digits --protocol grpc --url localhost:8001

Each sample is one request (Triton batches concurrent requests itself); the answer is the prediction, its
confidence and the timesteps the early exit used. Samples are raw, in [0, 1]: the server normalises them.
"""

from __future__ import annotations

import argparse

import numpy as np


def classify(client, module, x: np.ndarray, model: str = "seenn") -> tuple[int, float, int]:
    """(prediction, confidence, timesteps) for one raw sample x [C, H, W] (the bundle's input shape)."""
    tensor = module.InferInput("x", [1, *x.shape], "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x[None], dtype=np.float32))
    result = client.infer(model, [tensor])  # outputs are [1, 1]: one sample, one number
    return (int(result.as_numpy("prediction")[0, 0]), float(result.as_numpy("confidence")[0, 0]),
            int(result.as_numpy("timesteps")[0, 0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--url", default=None, help="host:port (default localhost:8000 for http, :8001 for grpc)")
    parser.add_argument("--model", default="seenn")
    parser.add_argument("--data", default="digits", help="seenn-deploy data spec whose test split to send")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()

    if args.protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")

    from seenn_deploy.data import parse_data_spec

    data = parse_data_spec(args.data).load("test").subset(args.samples)
    client = module.InferenceServerClient(url)
    try:
        if not client.is_model_ready(args.model):
            raise SystemExit(f"model {args.model!r} is not ready on {url}")
        correct = 0
        for i, x in enumerate(data.x):
            prediction, confidence, timesteps = classify(client, module, x, args.model)
            label = None if data.y is None else int(data.y[i])
            correct += prediction == label
            print(f"sample {i}: prediction {prediction} (label {label}), confidence {confidence:.3f}, "
                  f"{timesteps} timesteps")
        if data.y is not None:
            print(f"{correct}/{len(data.x)} correct")
    finally:
        client.close()


if __name__ == "__main__":
    main()
