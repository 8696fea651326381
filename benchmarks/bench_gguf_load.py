"""Loading a ``.gguf`` model for training: its peak memory against transformers' own load and a plain copy.

Run (needs the ``gguf`` package; with ``--gguf`` a real file, e.g. ``../shared/tools/get-smollm2``'s):

    MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 \\
      .venv/bin/python benchmarks/bench_gguf_load.py --gguf ~/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Without ``--gguf``: a tiny random Llama written as an F32 GGUF. transformers dequantizes a GGUF into a model
that still counts as quantized and will not ``save_pretrained``, so the trainer turns it into a plain model of
the same config (``gguf_float.plain_causal_lm``). Each variant runs in a fresh process; the window holds the
load and the conversion; the model's config is read before it opens:

- ``transformers``: ``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` alone (the path's floor:
  it cannot save, but nothing less loads the file);
- ``copy``: what one writes without prefpool: a second model from the config, then ``load_state_dict``
  from the loaded one (both copies live at once);
- ``prefpool``: ``ModelSource.causal_lm``, which builds the plain model without initialising it and
  hands it the loaded tensors (``assign``), so the weights exist once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from harness import dispatch, emit, run_child
from peak_memory import PeakMemory

VARIANTS = ("transformers", "copy", "prefpool")


def child(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from prefpool.pipeline.model.source import resolve_model

    source = resolve_model(args.gguf)
    source.config()
    window = PeakMemory()
    with window:
        if args.variant == "prefpool":
            model = source.causal_lm(torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(source.folder), dtype=torch.float32, **source.load_kwargs)
            if args.variant == "copy":
                config = model.config.__class__.from_dict(model.config.to_dict())
                del config.quantization_config
                plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
                plain.load_state_dict(model.state_dict(), strict=False)
                model = plain
        weights = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    emit({"peak_mib": window.extra_mib, "weights_mib": weights / 2**20, "method": window.method})


def parent(args) -> None:
    gguf = args.gguf
    if gguf is None:
        from prefpool.testing import build_tiny_llama, write_tiny_gguf

        root = Path(tempfile.mkdtemp())
        gguf = write_tiny_gguf(build_tiny_llama(root / "tiny"), root / "tiny-f32.gguf")
    runs = {v: [run_child(__file__, variant=v, gguf=gguf) for _ in range(args.repeats)] for v in VARIANTS}
    weights = runs["prefpool"][0]["weights_mib"]
    print(f"{Path(gguf).name}: float32 weights {weights:,.0f} MiB; {runs['prefpool'][0]['method']}")
    base = statistics.median(r["peak_mib"] for r in runs["transformers"])
    for variant, found in runs.items():
        peak = statistics.median(r["peak_mib"] for r in found)
        print(f"{variant:<13} load peak {peak:>8,.0f} MiB  {peak / base:.2f}x transformers' own load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    dispatch(parser, parent, child)


if __name__ == "__main__":
    main()
