"""The store schema: tables, row keys, and the typed reads and writes every service shares.

Row keys are designed for HBase at scale: a one-character salt spreads users and
items over pre-split regions, and reversed timestamps make "newest first" a plain
forward scan.  The embedded SQLite store keeps the same byte ordering, so these
keys behave the same on both.
"""
