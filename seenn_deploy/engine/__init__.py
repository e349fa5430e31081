"""`seenn-deploy build`: TensorRT engines for a bundle. Imports tensorrt only when a build runs."""

from seenn_deploy.engine.trt_builder import BuildOptions, BuildPlan, BuiltEngine, build_engines, network_mode, plan_build

__all__ = ["BuildOptions", "BuildPlan", "BuiltEngine", "build_engines", "network_mode", "plan_build"]
