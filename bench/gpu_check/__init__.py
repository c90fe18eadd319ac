"""One command on one GPU: rooflines, paged attention, KV handoff and engine step times at real widths.

    python -m bench.gpu_check                           # H100/H200: bf16, 4 layers, aims at < 5 min
    python -m bench.gpu_check --device cpu --preset tiny  # tiny widths: every code path, ~1-2 min
                                                        # on 2 cores, mostly compiling
    flags: --layers N, --no-compile (skip FlexPagedAttention and the compiled decode step),
    --fill auto|prefill|import, --time-limit S (no timing row starts after S seconds; 270)

Needs torch (and triton, for ``torch.compile`` on a GPU) and this checkout; nothing else is
imported. The report is Markdown on stdout; the exit status is 1 if any check FAILED. Modules:
``common`` (presets, the report, timing helpers), one per section below (``roofline`` 1,
``model`` 2, ``checks`` 3 and 4, ``timing`` 5) and ``__main__`` (the command).

1. Roofline probes, measured here: device-to-device copy bandwidth (read + write bytes / time)
   and the FLOP/s of one large GEMM in the run's dtype.
2. The language model of Qwen3-VL-30B-A3B (hidden 2048, 32/4 heads of 128, 128 experts top-8 of
   FFN 768, vocab 151936, MRoPE [24, 20, 20] at theta 5e6) built from ``shared.models`` with random
   weights (normal, std 0.02; norms 1) and ``--layers`` decoder layers; parameters per layer and
   projected to the published 48.
3. ``PagedAttention`` (and ``FlexPagedAttention`` where that module exists) against
   ``ContiguousAttention`` on one packed batch of prefill chunks and decodes at block boundaries,
   in bf16 and fp32: max |error| over a tolerance of 2e-2 (bf16) or 1e-5 (fp32) x max |reference|.
4. A seeded (temperature 1, seed 7) and a greedy request handed from a CPU engine to one on
   ``--device`` (a small fp32 model, the same weights on both): ``export_state`` + ``export_kv``
   after a few tokens, ``import_sequence``, generate the rest. Checked: it continues to
   ``max_tokens``; two imports of the same state give the same tokens; greedy tokens equal the
   CPU-only run; seeded tokens equal it only when both engines are of one device kind (the
   sampler's guarantee, ``shared/engine/sampler.py``), so across kinds that is reported, not checked.
5. Engine step times at the widths of 2, eager and (where ``EngineConfig`` has ``compile_decode``)
   compiled: prefill of the longest context, then decode steps at each context x batch (2k / 8k x
   1 / 16 / 64). Contexts are filled by prefilling random prompts, or, when the measured prefill
   rate says that would take longer than ``--fill-budget`` seconds, by importing random KV through
   ``import_sequence`` (the report says which). Roofline: a decode step reads the weights it uses
   (attention, router, norms, lm_head, the E(1 - (1 - K/E)^b) experts a batch of b hits per layer)
   and every context's KV, floor = bytes / copy bandwidth; prefill does 2 x active params x tokens
   + 4 x layers x Hq x D x L^2 / 2 attention FLOPs, floor = FLOPs / GEMM FLOP/s. Per layer = (step -
   the same step with the decoder layers removed) / layers, measured with the eager engine (the
   compiled rows use that eager fixed part too), and 48 layers = fixed part + 48 x per layer.
"""
