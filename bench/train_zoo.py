"""Train a zoo checkpoint and write it, with its record, under checkpoints/<model>_<data>/.

    python bench/train_zoo.py resnet20 fashion_mnist --epochs 3 --limit 30000

Writes model.json + model.safetensors (chanprune.save) and record.json: the exact command, the
training config, test accuracy on the full test split, MACs and params at the data's input size,
wall time, threads and versions. The README's MODEL_ZOO table is generated from record.json files.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import chanprune
from chanprune._atomic import write_text_atomic
from chanprune.engine import TrainConfig, evaluate, train
from chanprune.measurement import count_macs_params

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="train on a stratified subset of this many images")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save the resumable state every N optimizer steps (0: at epoch ends only); a run killed "
                        "mid-epoch then loses at most N steps")
    p.add_argument("--model-kwargs", default="{}", help="JSON dict of extra create_model arguments, e.g. '{\"width\": 0.5}'")
    p.add_argument("--out", default=None, help="folder (default checkpoints/<model>_<data>)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = chanprune.load_data(args.data)
    kwargs = json.loads(args.model_kwargs)
    model = chanprune.create_model(args.model, num_classes=data.num_classes, in_channels=data.in_channels, **kwargs)
    out = Path(args.out) if args.out else ROOT / "checkpoints" / f"{args.model}_{args.data}"
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, limit_train=args.limit,
                         checkpoint_every=args.checkpoint_every)
    t0 = time.time()
    history = train(model, data, config, checkpoint_dir=ROOT / "runs" / "train" / out.name, progress=True, eval_each_epoch=False)
    seconds = time.time() - t0
    model.eval()
    result = evaluate(model, data, split="test")
    macs, params = count_macs_params(model, data.example_inputs(1))
    chanprune.save(model, out / "model", extra={"data": args.data, "test_accuracy": result["accuracy"]})
    record = {
        "model": args.model, "model_kwargs": kwargs, "data": args.data, "data_source": data.source,
        "command": "python bench/train_zoo.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "train_config": config.as_dict(), "train_images": args.limit or len(data.train),
        "test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_images": result["n"],
        "macs": macs, "params": params, "input": list(data.example_inputs(1).shape[1:]),
        "train_seconds": seconds, "threads": args.threads, "device": history.get("device"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "versions": {"torch": torch.__version__, "chanprune": chanprune.__version__, "python": platform.python_version()},
        "epochs": history["epochs"],
    }
    write_text_atomic(out / "record.json", json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("model", "data", "test_accuracy", "macs", "params", "train_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
