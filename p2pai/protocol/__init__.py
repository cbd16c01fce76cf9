"""Wire models of every API family: request bodies as clients send them, answers as nodes send them.

Pure pydantic, importing nothing else of p2pai: serving builds the answers, the
HTTP handlers serialize them, and api/openapi.py documents both from here.
"""
