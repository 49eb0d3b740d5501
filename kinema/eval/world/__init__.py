"""The world benchmark: score generated videos against the procedural scene each prompt asked for."""
