"""MLflow pyfunc model, logged as code: loads base + LoRA adapter and answers questions.

This file is copied into every logged model and must not import `injector`: a served model needs only
mlflow, torch, transformers and peft. Input: a DataFrame with a `question` column (or a list of strings).
Output: one greedy answer per question.
"""

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    def load_context(self, context):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = context.model_config or {}
        base = cfg["base_model_path"]
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        # on a GPU host: bf16 on the GPU (as injector trains and evaluates there); else fp32 on the CPU
        cuda = torch.cuda.is_available()
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to("cuda" if cuda else "cpu")
        # merged for inference: same outputs, less latency
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).merge_and_unload().eval()
        self.max_new_tokens = int(cfg.get("max_new_tokens", 48))

    def _questions(self, model_input):
        if hasattr(model_input, "columns"):
            col = "question" if "question" in model_input.columns else model_input.columns[0]
            return [str(q) for q in model_input[col].tolist()]
        if isinstance(model_input, dict):
            q = model_input.get("question", [])
            return [q] if isinstance(q, str) else list(q)
        if isinstance(model_input, str):
            return [model_input]
        return [str(q) for q in model_input]

    def predict(self, context, model_input, params=None):
        import torch

        questions = self._questions(model_input)
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                    tokenize=False) for q in questions]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        n = enc["input_ids"].shape[1]
        return [self.tokenizer.decode(row[n:], skip_special_tokens=True).strip() for row in out]


mlflow.models.set_model(AdapterModel())
