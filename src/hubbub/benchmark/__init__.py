"""Server-side fan-out benchmark: Hubbub on both ports against its peers, side by side."""
