"""Publishing and reusing models through Hugging Face.

`hf` converts between gptlab checkpoints and standard `transformers` GPT-2 folders (both ways, one
key-mapping table); `card` writes the model card; `upload` pushes an export to the Hub with
`huggingface_hub`; `commands` holds the `export`, `upload` and `import-hf` sub-commands.
Nothing here needs `transformers` installed: the files are written directly.
"""
