"""Generated protobuf stubs; see scripts/gen_grpc_stubs.py."""
