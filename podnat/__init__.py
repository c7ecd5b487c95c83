"""podnat: which iptables rule did that? Istio sidecar traffic capture, explained pod by pod."""

__version__ = "0.1.0"
