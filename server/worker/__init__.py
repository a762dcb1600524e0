"""What each inference worker runs: the batch loop, the servables in memory, the loader."""
