"""A tiny random-init BART on the bundled sample data: CPU, offline, a few minutes.

It exercises every part of the pipeline (tokenizer, buckets, train, eval, checkpoints)
without downloads or an accelerator; the summaries it learns are not meant to be good.

    python train_flax.py --config configs/tiny.py train.num_epochs=1
"""

from kobart_flax.config import Config, DataConfig, DecodingConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    model = ModelConfig(
        pretrained=None,  # random init: nothing to download
        tokenizer="data/sample/tokenizer",  # bundled, so it works offline
        vocab_size=4000,  # the bundled tokenizer's size; must be >= len(tokenizer)
        # KoBART's architecture (768 wide, 6+6 layers) shrunk so a 2-core CPU copes.
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        attention_heads=4,
        ffn_dim=512,
        # Kept at KoBART's size so the position table has the same shape rules (offset 2).
        max_position_embeddings=1026,
        # No dropout: with a few thousand templated examples it mostly delayed the point
        # where the decoder learns to copy from the source (eval loss 1.44 vs 0.98 after
        # 1000 steps; ROUGE-1 0.21 vs 0.76).
        dropout=0.0,
        attention_dropout=0.0,
        dtype="float32",  # CPUs have no fast bfloat16 matmul
    )
    data = DataConfig(
        train_path="data/sample/train.tsv",
        eval_path="data/sample/test.tsv",
        # A quarter of the real job's source length: the sample summaries restate facts of
        # the first sentences, and a CPU step costs about twice as much at 256.
        max_source_length=128,
        max_target_length=64,
        source_buckets=(64, 128),  # few buckets = few jit compiles on a slow CPU
        target_buckets=(32, 64),
        bad_rows="error",  # the sample is curated: a bad row there is a bug
        prefetch=2,
    )
    train = TrainConfig(
        workdir="runs/tiny",
        seed=0,
        batch_size=32,  # small steps for a CPU; also shards over 2, 4 or 8 simulated devices
        grad_accum_steps=1,
        num_epochs=8,  # 1000 steps: a few minutes on a 2-core CPU
        max_steps=0,
        # A tiny model trained from scratch needs a far larger lr than fine-tuning (3e-5).
        learning_rate=1e-3,
        warmup_ratio=0.05,  # short warmup: the run is only a few hundred steps
        weight_decay=0.01,
        max_grad_norm=1.0,
        label_smoothing=0.0,
        # Trained from scratch, the bias learns the summaries' token frequencies: frozen at
        # zero, eval loss at step 1000 was 1.12 instead of 0.98 (ROUGE-1 0.72 vs 0.76).
        freeze_final_logits_bias=False,
        eval_every=100,  # each eval is cheap: 200 test rows
        eval_max_batches=0,
        log_every=20,
        # Checkpoints (runs/tiny/checkpoints, ~21 MB each: params + Adam moments). With
        # keep_best on, every evaluation is a checkpoint too. Rerunning the command resumes.
        checkpoint_every=100,
        keep_checkpoints=2,  # the newest 2, to resume from
        keep_best=1,  # plus the one with the lowest eval loss
        best_metric="eval_loss",
        best_mode="min",
        init_checkpoint=None,
        # ROUGE (Mecab morphemes, as Dacon scored it) of beam-4 summaries of the 200 test
        # articles, at steps 500 and 1000: a few seconds each.
        rouge_every=500,
        rouge_examples=0,
        rouge_tokenization="mecab",
        early_stopping_patience=0,
    )
    decoding = DecodingConfig(
        num_beams=4,
        max_length=64,  # the sample summaries are one sentence, under 40 tokens
        min_length=0,
        length_penalty=1.0,
        no_repeat_ngram_size=0,
        batch_size=50,
    )
    return Config(model=model, data=data, train=train, decoding=decoding)
