"""C++ sources of the elastix-bridge IMPACT plugin (installed as elastix_bridge.plugin_src)."""
