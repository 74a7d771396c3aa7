"""The online gateway: FastAPI app serving /recall, /recommend, /rerank, /health, /metrics."""
