"""Dense heads that predict at every anchor or location: RPN, RetinaNet."""
