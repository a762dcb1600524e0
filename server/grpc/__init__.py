"""The Open Inference Protocol over gRPC (Triton's `inference.GRPCInferenceService`), served by
one process beside the HTTP processes; see docs/grpc.md."""
