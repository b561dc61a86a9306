"""The sections of the config tree, one dataclass each; every field documented once.

The string literal under a field is its documentation (mathrl.config.schema.field_docs
reads it for `mathrl config keys`). Keys whose value names a registered variant
(train.algorithm, task.prompt_style, ...) do not list the names here: the registries
do, and the config reads its choices from them (mathrl.config.validate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mathrl.rewards import RewardFn


@dataclass
class ScratchConfig:
    """A model built from a config in code, with a tokenizer trained on the task's text."""

    arch: str = "qwen2"
    """Architecture of the from-scratch model: qwen2 or llama."""
    hidden: int = 128
    """Hidden size of the from-scratch model."""
    layers: int = 3
    """Number of transformer layers of the from-scratch model."""
    heads: int = 4
    """Attention heads of the from-scratch model."""
    vocab_size: int = 512
    """Target vocabulary size of the locally trained tokenizer."""
    max_position: int = 512
    """Maximum sequence length of the from-scratch model."""


@dataclass
class LoraConfig:
    """Optional LoRA adapters (torch: the peft extra; MLX: mlx-lm's LoRA layers); r = 0 trains
    all weights."""

    r: int = 0
    """LoRA rank; 0 disables LoRA."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""


@dataclass
class ModelConfig:
    """Which policy to train and where it runs."""

    path: str = "scratch"
    """HF hub id, local HF dir, .gguf file, 'smollm2-135m-instruct' (offline), or 'scratch'."""
    dtype: str = "auto"
    """Weights and optimizer state: auto (= float32), float32, bfloat16 or float16.
    Training bf16/fp16 weights rounds small updates away; prefer float32 + model.autocast."""
    autocast: str = "auto"
    """Mixed precision: auto (bfloat16 on a CUDA GPU that has it, else none), none, bfloat16
    or float16. Forwards (rollout, training, eval) run under torch.autocast in this dtype
    while weights and optimizer state stay in model.dtype. Fast on GPUs and on CPUs with
    AMX/AVX512-BF16 (set it there by hand)."""
    device: str = "auto"
    """auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps."""
    threads: int = 0
    """torch CPU threads; 0 uses every core."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping
    them (transformers' own, non-reentrant): same gradients, less peak memory on long
    sequences, ~1/3 more compute per train step (BENCHMARKS.md, issue 31)."""
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class MixtureEntry:
    """One task of task.mixture."""

    name: str
    """Its label in metrics (a task name when `set` has no task.name)."""
    weight: float = 1.0
    """Its share of the sampled prompts (relative to the others' weights)."""
    set: list[str] = field(default_factory=list)
    """Config overrides that make it, in --set form, e.g. ["data.arithmetic_digits=2"]."""


@dataclass
class TaskConfig:
    """The task: data, prompt and reward."""

    name: str = "countdown"
    """gsm8k, countdown, arithmetic (generated, data.arithmetic_*), or qa (your own
    question/answer data: data.path and data.*_field)."""
    prompt_style: str = "final_line"
    """How the prompt asks for the final answer, and where the reward looks for it
    (mathrl.rewards.PROMPT_STYLES: e.g. final_line ends with 'Final: N')."""
    reward_scheme: str = "format"
    """Reward from correctness and format (mathrl.rewards.REWARD_SCHEMES: e.g. format gives
    1 correct / 0.1 formatted but wrong / 0)."""
    system_prompt: str | None = None
    """Override the style's system prompt (None keeps the default)."""
    use_math_verify: bool = False
    """GSM8K: also accept LaTeX answers math-verify finds equal (needs the math-verify extra)."""
    grader: str = "numeric"
    """qa: how an answer is compared with the gold one (mathrl.rewards.GRADERS: numeric,
    math_verify for LaTeX, exact text, choice letter)."""
    rewards: list[RewardFn] = field(default_factory=list)
    """Weighted reward terms replacing the task's reward, e.g. [{fn = "pkg.mod:name",
    weight = 0.5}, {fn = "task"}]: fn is an import path to a TRL-style function
    fn(completions, **columns) -> list[float | None], or task / correct / format; optional
    name (metric reward/<name>) and completions = messages (TRL's chat form) or text.
    fn = "overlong" is DAPO's soft overlong punishment (Yu et al., 2025) on the
    completion's token count: 0 up to rollout.max_new_tokens - task.overlong_buffer, then
    linear to -1 at rollout.max_new_tokens, times weight (DAPO: weight 1).
    Empty: the task's reward under task.reward_scheme."""
    mixture: list[MixtureEntry] = field(default_factory=list)
    """Train on several tasks at once, e.g. [{name = "add", set = ["task.name=arithmetic"]},
    {name = "countdown", weight = 2}]: each entry is this config with its `set` overrides
    (--set form; without task.name in them, `name` is the task's name) and keeps its own
    prompt, data and reward; weight is its share of the sampled prompts. Held-out metrics
    are the entries' test splits together. Empty: one task."""
    overlong_buffer: int = 0
    """Tokens before rollout.max_new_tokens where the `overlong` reward term starts to
    punish (DAPO: 4096 of 20480, a fifth); needed when task.rewards names overlong."""


@dataclass
class DataConfig:
    """Where examples come from."""

    path: str = "auto"
    """GSM8K: a .jsonl/.parquet file or dir with train/test files, 'hub' for openai/gsm8k, or
    auto ($MATHRL_GSM8K, else the copy `mathrl data prepare gsm8k` cached, else the hub).
    qa: a .jsonl/.json/.csv/.parquet file, a dir with train.* (and test.*),
    hf:owner/name[@revision], or bench:NAME (a benchmark's test problems, e.g. bench:math500;
    mathrl.tasks.benchmarks). Countdown: a nums/target file; anything else generates."""
    hub_revision: str = "e53f048856ff4f594e959d75785d2c2d37b678ee"
    """Pinned revision of openai/gsm8k when data.path = 'hub'."""
    val_size: int | None = None
    """Train problems reserved for validation (GSM8K, qa); 0 for none; None: 10% of the train rows, at most 512 (the run says what it chose)."""
    dedupe: bool = False
    """qa: drop repeated rows (same question and answer, or same id_field), keeping the first, with the count in the events log; false: a repeated row stops the run."""
    question_field: str = "question"
    """qa: the column holding the question."""
    answer_field: str = "answer"
    """qa: the column holding the gold answer (text or a number)."""
    solution_field: str | None = None
    """qa: a column with worked solutions (SFT warm-up data); None: answers only."""
    id_field: str | None = None
    """qa: a column with unique ids (the prompt_id in logs); None: a hash of the content."""
    split_seed: int = 31415
    """Seed of the train/validation split."""
    countdown_numbers: list[int] = field(default_factory=lambda: [3])
    """How many numbers a generated Countdown instance has (choices among 3 and 4)."""
    countdown_max_number: int = 20
    """Largest number of a generated Countdown instance."""
    countdown_max_target: int = 100
    """Largest target of a generated Countdown instance."""
    countdown_train_size: int = 10000
    """Generated Countdown training instances."""
    countdown_test_size: int = 1000
    """Generated Countdown held-out instances (never in training)."""
    arithmetic_kind: str = "add"
    """Generated arithmetic (task.name = arithmetic): add, mul, mixed or word."""
    arithmetic_digits: int = 2
    """Digits of each generated arithmetic operand."""
    arithmetic_train_size: int = 10000
    """Generated arithmetic training items, at most: a kind with fewer distinct items (2-digit
    add has 8,190, 1-digit add 110) trains on all of them that are not held out."""
    arithmetic_test_size: int = 500
    """Generated arithmetic held-out items (never in training)."""
    keep_pass_rate: list[float] | None = None
    """Keep only training prompts whose probed pass rate lies in [lo, hi] (needs data.pass_rates)."""
    pass_rates: str | None = None
    """pass_rates.jsonl written by `mathrl probe` (used by data.keep_pass_rate)."""
    curriculum: str = "uniform"
    """Which training prompts each step takes: uniform (shuffled epochs) or learnability
    (weight p(1 - p) from each prompt's pass rate so far, estimated from the run's own
    samples; prompts not yet seen take their task's rate; mathrl.curriculum)."""
    curriculum_floor: float = 0.02
    """learnability: the least weight of a prompt, so solved and failed ones are revisited
    (p(1 - p) is at most 0.25)."""


@dataclass
class RolloutConfig:
    """Sampling of completions."""

    engine: str = "hf"
    """Rollout engine (mathrl.rollout.registry.ENGINES; hf: in-process, KV-cached)."""
    max_new_tokens: int = 256
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    batch_size: int = 64
    """Sequences decoded at once (a multiple of train.group_size)."""
    ignore_eos: bool = False
    """Always generate max_new_tokens (benchmarks)."""
    lean_decode: bool = True
    """Llama/Qwen2 models decode with mathrl's lean step: the same samples and log-probs as
    transformers' forward, less overhead, each prompt's K/V shared by its group. Other
    architectures always use transformers' forward."""
    static_decode: bool = False
    """Decode with the static-shape step (rollout/static_decode.py): fixed rows per chunk
    (finished rows stay, masked), K/V buffers fixed per shape bucket (each prompt's K/V
    once per group), sampling on the device with one "all finished?" check per 16 steps
    on a GPU. Same samples and log-probs as the lean step; needed by rollout.compile. Off by default: eager on a
    CPU it is slower than the lean step (BENCHMARKS.md, issue 31)."""
    compile: str = "off"
    """off, default or cudagraphs: torch.compile the static step (needs static_decode),
    once per (rows, n, prompt width rounded up to 128, max_new_tokens) bucket;
    cudagraphs on CUDA is mode="reduce-overhead" (CUDA graphs), on a CPU the same as
    default. Compile seconds are logged as time/rollout_compile_s; inductor's cache
    stays in ~/.cache/mathrl/torchinductor (or $TORCHINDUCTOR_CACHE_DIR). Off by default:
    on a CPU the compiled step is slower than the lean one (BENCHMARKS.md)."""
    autocast: str = "model"
    """Precision of in-process rollouts: model (as model.autocast), or none / bfloat16 /
    float16 whatever the trainer uses. Sampling in bf16 from an fp32 trainer is faster on
    GPUs and AMX CPUs; its log-probs then differ (rollout/logprob_diff): pair it with
    train.tis_cap."""
    weights: str = "model"
    """Weights in-process training rollouts (and mathrl serve) decode from: model (the
    trainer's own), or a copy of the linear layers in fp16 or int8 (CPU, fp32 models, no
    autocast or LoRA; fbgemm kernels; re-made after each optimizer step). Evaluation and
    probes always use the model's own. Faster on real-size models (BENCHMARKS.md);
    their log-probs differ from the trainer's (rollout/logprob_diff; fp16 slightly, int8
    by ~0.4 nat/token on SmolLM2): pair them with train.tis_cap."""
    server_url: str = ""
    """engine = "openai": the server's base URL (mathrl serve, vLLM, SGLang), e.g.
    http://127.0.0.1:8000."""
    server_model: str = ""
    """engine = "openai": the model name to request; empty takes the first of /v1/models."""
    api_key_env: str = ""
    """engine = "openai": the environment variable holding the server's API key (empty: none)."""
    weight_sync: str = "load_weights"
    """engine = "openai": how the server gets each step's weights: load_weights (mathrl
    serve's /v1/load_weights), vllm_lora (vLLM's runtime LoRA loading; LoRA training) or
    none (the server's model never changes)."""
    weights_dir: str = ""
    """engine = "openai": where the trainer writes the weights the server loads (mathrl
    serve: under its --weights-root); empty: <run dir>/served_weights."""
    verify_weights: bool = True
    """engine = "openai": after each load, the server's weights digest must equal the
    trainer's (mathrl serve reports it); a mismatch stops the run."""
    check_tokenizer: bool = True
    """engine = "openai": refuse a server whose tokenizer differs from the trainer's."""
    concurrency: int = 32
    """engine = "openai": requests in flight at once (one per prompt; the server batches)."""
    request_timeout_s: float = 600.0
    """engine = "openai": seconds one request may take (retried on timeouts, 429 and 5xx)."""
    off_policy_steps: int = 0
    """0: each step samples from the current weights. 1: step t+1's rollouts are sampled
    while step t trains (from the weights before step t), and the loss corrects with the
    sampler's log-probs; rollout/staleness logs the lag (never more than this)."""


@dataclass
class TrainConfig:
    """The RL optimisation."""

    algorithm: str = "grpo"
    """Advantage estimator (mathrl.algorithms.ADVANTAGES): grpo (DeepSeekMath, Shao et al.,
    2024), dr_grpo (Liu et al., 2025), rloo (Ahmadian et al., 2024), reinforce (EMA
    baseline), reinforce_pp / reinforce_pp_baseline (REINFORCE++, Hu, 2025: the reward, or
    reward minus group mean, whitened over the whole step's batch; the paper recommends
    reinforce_pp_baseline with groups)."""
    policy_loss: str = "ppo_clip"
    """Policy loss (mathrl.algorithms.POLICY_LOSSES): ppo_clip (PPO / GRPO), vanilla, gspo
    (Zheng et al., 2025: clip_eps 3e-4, clip_eps_high 4e-4), cispo (MiniMax-M1, 2025:
    clipped stop-gradient IS weight on REINFORCE; a large clip_eps_high, e.g. 4), sapo (Gao
    et al., 2025: soft gate, sapo_tau_pos 1.0, sapo_tau_neg 1.05)."""
    loss_agg: str = "token-mean"
    """How token losses become one number (mathrl.algorithms.AGG_MODES)."""
    steps: int = 100
    """Optimizer steps (one rollout batch each, times mu updates)."""
    prompts_per_step: int = 8
    """Distinct prompts per rollout batch."""
    group_size: int = 8
    """Completions per prompt."""
    lr: float = 1e-6
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: constant or cosine."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation over the batch)."""
    mu: int = 1
    """Optimizer updates per rollout batch; > 1 reuses old log-probs (PPO style)."""
    clip_eps: float = 0.2
    """PPO lower clip range."""
    clip_eps_high: float | None = None
    """PPO upper clip range (DAPO clip-higher); None uses clip_eps."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the reference model; 0 builds no reference."""
    kl_estimator: str = "k3"
    """KL estimator (mathrl.algorithms.KL_ESTIMATORS)."""
    baseline_momentum: float = 0.9
    """EMA momentum of the REINFORCE baseline; 0 disables the baseline."""
    drop_zero_std: bool = False
    """Drop groups whose rewards are all equal and resample (dynamic sampling)."""
    min_positive: int = 0
    """Keep sampling until a round has this many positive-reward samples."""
    share_prompts: bool = True
    """Training forward runs each group's prompt once and shares its KV cache across the group (same values, less compute); false runs every prompt+completion row in full."""
    max_total_rollouts: int = 0
    """Bound on completions sampled per step when resampling; 0 means 4x the batch."""
    reward_timeout_s: float = 5.0
    """Time limit of one reward call; a timed-out sample gets reward 0."""
    reward_workers: int = 1
    """Reward worker processes (they bound the time of each call)."""
    reward_memory_mb: int = 2048
    """Memory (MiB of address space, RLIMIT_AS) a reward worker may allocate beyond what it starts with; a reward over it gets a MemoryError (reward 0). 0: no limit."""
    reward_cpu_s: int = 60
    """CPU seconds one reward call may use (RLIMIT_CPU, inherited by processes it starts); a call over it kills its worker (reward 0). 0: no limit."""
    nonfinite: str = "skip"
    """On a non-finite loss or gradient: skip the step, or stop the run."""
    mask_truncated: bool = False
    """Completions cut at rollout.max_new_tokens get no policy gradient and leave the loss
    normaliser (DAPO's overlong filtering, Yu et al., 2025; TRL's
    mask_truncated_completions). Recommended true when many completions hit the limit."""
    entropy_coef: float = 0.0
    """Weight of an entropy bonus in the loss (- entropy_coef x the aggregated token
    entropy; Williams & Peng, 1991, as in PPO). Small if used, e.g. 0.001: LLM policies
    rarely need it and a large one makes outputs random."""
    top_entropy_quantile: float = 1.0
    """Only this top fraction of each micro-batch's tokens by entropy carries policy
    gradient ("Beyond the 80/20 Rule", Wang et al., 2025; TRL's top_entropy_quantile).
    The paper recommends 0.2; 1.0 keeps every token."""
    sapo_tau_pos: float = 1.0
    """policy_loss = "sapo": gate temperature where the advantage is positive (SAPO, Gao
    et al., 2025: 1.0)."""
    sapo_tau_neg: float = 1.05
    """policy_loss = "sapo": gate temperature where the advantage is negative (SAPO: 1.05,
    larger than sapo_tau_pos so negative updates fade faster)."""
    logprob_chunk_tokens: int = 0
    """Tokens per chunk of the output head in the training forward: with grad each chunk is
    recomputed in backward, so at most chunk x vocabulary float32 logits exist at once
    (same values and gradients). 0: all completion tokens in one pass. For large
    vocabularies, e.g. 1024."""
    tis_cap: float = 0.0
    """Truncated importance sampling: weight each token's policy loss by min(pi_trainer /
    pi_sampler, tis_cap) (>= 1; 0 = off), for a sampler whose log-probs differ from the
    trainer's (a server engine in another precision). rollout/logprob_diff is logged
    either way."""
    parallel: str = "ddp"
    """With several ranks (torchrun): ddp, every rank holds the whole model and gradients
    are summed over ranks once per optimizer step; fsdp, parameters, gradients and AdamW
    state are sharded over the ranks (FSDP2, one unit per decoder layer), for models whose
    training state does not fit one device (rollouts gather the whole model, so the weights
    alone must). Not with LoRA."""
    collective_timeout_s: float = 600.0
    """With several ranks: a collective waiting longer than this (a dead or stuck rank)
    stops the run with an error naming the rank and step."""


@dataclass
class SFTConfig:
    """Supervised warm-up / fine-tuning."""

    steps: int = 0
    """Optimizer steps of `mathrl sft` (the warm-up inside train/loop is [warmup])."""
    lr: float = 1e-4
    """SFT learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay of SFT (torch's AdamW default)."""
    batch_size: int = 32
    """Sequences per SFT step."""
    max_len: int = 512
    """Truncate SFT sequences to this many tokens."""
    data: str | None = None
    """prompt/response or messages JSONL; None uses the task's own solutions."""


@dataclass
class WarmupConfig:
    """SFT warm-up before RL in `train` and `loop` (lr, batch_size, max_len from [sft])."""

    steps: int = 0
    """Warm up with this many SFT steps on the task's own solutions before RL; 0: none, unless min_positive triggers one."""
    min_positive: float = 0.0
    """Probe RL's first round from the starting model first: if fewer than this fraction of its samples are correct, warm up for auto_steps; 0 disables the probe."""
    auto_steps: int = 200
    """SFT steps of a warm-up triggered by min_positive."""


@dataclass
class ExpertIterConfig:
    """`mathrl expert-iter`: rounds of sample -> keep correct -> SFT -> eval."""

    rounds: int = 3
    """Rounds to run."""
    prompts: int = 256
    """Training prompts sampled per round (a seeded draw per round)."""
    samples: int = 8
    """Completions per prompt (at rollout.temperature)."""
    max_per_prompt: int = 2
    """Distinct correct completions kept per prompt."""
    sft_steps: int = 100
    """SFT steps per round on the kept completions (lr, batch_size, max_len from [sft])."""


@dataclass
class CheckpointConfig:
    """When and how checkpoints are written."""

    every: int = 50
    """Write a checkpoint every this many steps (and at the end); 0: only at the end."""
    keep_last: int = 3
    """Keep this many newest checkpoints."""
    on_signal: bool = True
    """On SIGINT/SIGTERM, finish the step, write a checkpoint and exit (130/143); a second
    signal stops at once. False: stop at the step boundary without writing one."""


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    every: int = 0
    """Evaluate every this many training steps (and before the first); 0 disables periodic eval."""
    split: str = "auto"
    """Held-out split for eval: val, test, or auto (val when it is non-empty, else test)."""
    limit: int = 200
    """Held-out problems per evaluation (seeded sample); 0 = all."""
    n: int = 1
    """Samples per problem for mean@n and pass@k."""
    k: list[int] = field(default_factory=lambda: [1])
    """k values for pass@k (each <= n)."""
    temperature: float = 1.0
    """Sampling temperature for mean@n/pass@k (pass@1 greedy is always reported)."""
    batch_size: int = 0
    """Sequences decoded at once by eval (eval/pass@1 during training, `mathrl eval`, suites);
    0: max(rollout.batch_size, 64). Greedy eval batches across problems, so it can be
    larger than the training batch, whose size is set by RL's memory and step time."""
    suite: str = ""
    """Run this eval suite (mathrl.eval.suite.SUITES: default, synthetic, math for GSM8K,
    MATH-500, AIME 2024/2025 and AMC 2023, or one benchmark by name) on the final model at
    the end of `mathrl train`; empty: none."""


@dataclass
class RunConfig:
    """Process-wide switches of a run."""

    deterministic: bool = False
    """Deterministic kernels: torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG,
    cuDNN deterministic and no benchmark; recorded in manifest.json. Slower on GPU; an op
    without a deterministic kernel then stops the run with torch's error naming it."""


@dataclass
class LogConfig:
    """Where metrics go."""

    every: int = 1
    """Print metrics to the console every this many steps."""
    rollouts_every: int = 1
    """Write the step's completions to rollouts.jsonl every this many steps (and at the last step); 0: never. Long runs: 10 keeps the file 10x smaller."""
    quiet: bool = False
    """No progress bars or console tables (CI)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb extra)."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard extra)."""
