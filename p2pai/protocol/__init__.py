"""Wire models of every API family: request bodies as clients send them, answers as nodes send them.

Pure pydantic (plus the fixed bounds of serving/limits.py): serving builds the answers, the
HTTP handlers serialize them, and api/openapi.py documents both from here.
"""
