"""Sinks: committed vectors delivered, exactly once, into the databases applications already query.

rows       a committed unit's rows as a sink holds them (one shape for every sink)
base       what a sink does (`Sink`), the table name of a version, one vector space per table
postgres   PostgreSQL with pgvector: COPY into a staging table, upsert by id, one transaction per unit
lance      LanceDB: merge_insert by id, a table of the units it holds
deliver    opening the configured sinks; which units each lacks or must drop; the tasks that write them
"""
