"""Placeholder: being implemented (see the issue tracker)."""

from __future__ import annotations


def load(*args, **kwargs):
    raise NotImplementedError("datasets.load is not implemented yet")


def list_datasets(*args, **kwargs):
    raise NotImplementedError("datasets.list_datasets is not implemented yet")


def pbmc3k(*args, **kwargs):
    raise NotImplementedError("datasets.pbmc3k is not implemented yet")


def kang2018(*args, **kwargs):
    raise NotImplementedError("datasets.kang2018 is not implemented yet")


def zheng2017(*args, **kwargs):
    raise NotImplementedError("datasets.zheng2017 is not implemented yet")


def citeseq_pbmc5k(*args, **kwargs):
    raise NotImplementedError("datasets.citeseq_pbmc5k is not implemented yet")
