"""How the models unlearning starts from are made: knowledge injection (the tool's tiny vanilla
and gold models), the benchmarks' fine-tuning recipes, and the vanilla models shipped with the package."""
from .finetune import RECIPES, FinetuneConfig, FinetuneRecipe, finetune, inject_knowledge, resolve_recipe
from .inject import InjectionConfig

__all__ = ["RECIPES", "FinetuneConfig", "FinetuneRecipe", "finetune", "inject_knowledge", "resolve_recipe", "InjectionConfig"]
