"""The study's search spaces, one ``<dataset>.yaml`` per data set (package data).

A package so that an installed wheel carries the files: ``study.space.default_space_file``
finds them with :mod:`importlib.resources`, from the repository and from an install alike.
"""
