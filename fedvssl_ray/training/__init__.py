"""Ray-free training code: the local epoch loop, the client worker and the federated round loop."""
