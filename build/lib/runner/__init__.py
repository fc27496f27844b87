"""embx: declarative fine-tuning and evaluation of embedding models for retrieval."""

from __future__ import annotations
