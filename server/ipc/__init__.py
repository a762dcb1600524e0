"""What crosses between the server's processes: messages, channels, the status board, the drain."""
