"""The private descriptor pool of the generated stubs (see scripts/gen_grpc_stubs.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
