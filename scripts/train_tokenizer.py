"""Trains the small KoBART-style tokenizer bundled for tests and the sample data.

Like KoBART's: a character-level BPE over Metaspace pre-tokenization ('▁' marks a word start,
so decoding restores spaces), KoBART's special tokens at KoBART's ids, wrapped as a
transformers fast tokenizer that adds no special tokens by itself. The real model uses
KoBART's own 30,000-token vocabulary; this one exists so tests and the sample pipeline run
offline in seconds.

Usage, from the repository root:

    python -m scripts.train_tokenizer --train-file data/sample/train.tsv \
        --output-dir data/sample/tokenizer
"""

import argparse
import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kobart_flax.data_io import read_examples

# KoBART's special tokens in id order: <s>=0, </s>=1, <usr>=2, <pad>=3, <sys>=4, <unk>=5,
# <mask>=6. BpeTrainer assigns ids to special tokens in list order, before any learned token.
SPECIAL_TOKENS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>"]
METASPACE = "▁"


def common_hangul_syllables() -> list[str]:
    """The 2,350 Hangul syllables of KS X 1001, which cover nearly all everyday Korean text.

    Seeding the alphabet with them (plus printable ASCII) lets the tokenizer spell Korean that
    the templated sample data never uses, such as the demo articles, without <unk>.
    """
    # KS X 1001 places the syllables in rows 0xB0-0xC8, columns 0xA1-0xFE, of EUC-KR.
    return [
        bytes([row, column]).decode("euc_kr")
        for row in range(0xB0, 0xC9)
        for column in range(0xA1, 0xFF)
    ]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Trains a BPE tokenizer on ``texts`` and wraps it the way KoBART's tokenizer is wrapped."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    # prepend_scheme="always" mirrors KoBART's add_prefix_space: every text starts with '▁'.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(METASPACE, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(METASPACE, prepend_scheme="always")
    alphabet = common_hangul_syllables() + list(string.printable.strip()) + [METASPACE]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        # KoBART's tokenizer returns token_type_ids too; keeping that quirk here means the code
        # that must drop them is exercised by the tests.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def name_class_like_kobart(config_file: Path) -> None:
    """Record the class as KoBART's hub files do: transformers 5 writes its internal
    ``TokenizersBackend`` name, which transformers 4 (and the exported models' users)
    cannot resolve; ``PreTrainedTokenizerFast`` loads in both."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    config_file.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-file", default="data/sample/train.tsv")
    parser.add_argument("--output-dir", default="data/sample/tokenizer")
    parser.add_argument("--vocab-size", type=int, default=4000)
    args = parser.parse_args()
    examples = read_examples(args.train_file)
    texts = [text for example in examples for text in (example.news, example.summary)]
    tokenizer = train_tokenizer(texts, args.vocab_size)
    tokenizer.save_pretrained(args.output_dir)
    name_class_like_kobart(Path(args.output_dir) / "tokenizer_config.json")
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
