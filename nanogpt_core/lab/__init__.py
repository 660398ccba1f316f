"""The lab: experiments that measure the speedrun and produce the book's figures.

Each module trains or times the core's code and writes its result through
``results.save_result`` (hardware, torch version, date, command, seeds) to ``book/results/``:

    baseline_stability  the 2019 recipe's loss spikes over peak learning rates and seeds (chapter 02)
    bench               tokens/s of the speed stages, attention backends, a step profile
    grading             the time to grade a class of 30 submissions per chapter
    scoreboard          every ladder stage at an equal wall-time budget against the gpt2 baseline
    ablation            the architecture switches of chapter 06, alone and together
    ablations_negative  what the speedrun tried and dropped (chapter 10)
    muon_sweep          Muon against AdamW over learning rates (chapter 05)
    bos_alignment       loss by position in the document: BOS-aligned rows vs the plain stream (chapter 07)
    packing             how each loader policy fills rows, steady state and drain, loader throughput (chapters 07-08)
    precision           native bf16 or not: matmul rates and stage step times (chapter 04)
    contention          a training step on a quiet CPU and on one shared with a CPU-bound process

The core never imports the lab.
"""
