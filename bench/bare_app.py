"""The ceiling for ``bench.service``: the least a FastAPI + uvicorn endpoint does for a V2 request.

Same body as the project's ``/v2/models/{name}/infer`` (Open Inference Protocol
JSON, one ``features`` input FP32 [N, 128]), the same model-sized work — a torch
``Linear(128, 6)`` and the Energy score ``−logsumexp(logits)`` — and the same
kind of answer (``logits`` and ``ood_score`` tensors), with nothing else: no
auth, no validation beyond what the work needs, no metrics, no access log. Run
by :func:`bench.harness.serve_ceiling` as ``uvicorn bench.bare_app:app`` (one torch thread,
like the service).
"""

from __future__ import annotations

import json

import torch
from fastapi import FastAPI, Request

app = FastAPI()
with torch.random.fork_rng():  # a fixed head without touching the importer's random state
    torch.manual_seed(0)
    head = torch.nn.Linear(128, 6).eval()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> dict[str, object]:
    tensor = json.loads(await request.body())["inputs"][0]
    features = torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])
    with torch.no_grad():
        logits = head(features)
        energy = -torch.logsumexp(logits, dim=1)
    return {
        "model_name": name,
        "outputs": [
            {
                "name": "logits",
                "shape": list(logits.shape),
                "datatype": "FP32",
                "data": logits.flatten().tolist(),
            },
            {
                "name": "ood_score",
                "shape": list(energy.shape),
                "datatype": "FP32",
                "data": energy.tolist(),
            },
        ],
    }
