"""Getting the bytes a row or a request names: the source policy (which URIs), the network policy (which
addresses), local files, object stores and HTTP(S), each read under a deadline."""
