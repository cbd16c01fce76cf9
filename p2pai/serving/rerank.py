"""POST /v1/rerank: the documents most relevant to a query, by a cross-encoder, best first."""

from __future__ import annotations

import numpy as np

from ..protocol.localai import RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage
from .context import ServedModel
from .validation import check_count, check_text_lengths


async def rerank(served: ServedModel, request: RerankRequest) -> RerankResponse:
    documents = request.documents
    check_count(len(documents), served.limits.max_documents, "documents", "documents")
    max_chars = served.engine.info.max_input_chars
    check_text_lengths([request.query], max_chars, "query")
    check_text_lengths(documents, max_chars, "documents")
    scores, tokens = await served.engine.rerank(request.query, documents)
    served.count_input(tokens)
    order = np.argsort(-scores, kind="stable")[: request.top_n or len(documents)]
    results = [
        RerankResult(index=int(index), relevance_score=float(scores[index]),
                      document=RerankDocument(text=documents[index]) if request.return_documents else None)
        for index in order
    ]
    return RerankResponse(model=served.name, usage=RerankUsage(total_tokens=tokens, prompt_tokens=tokens),
                          results=results)
