"""The registered model, as an MLflow "model from code": review texts in, labels and probabilities out.

MLflow copies this file into every logged model and runs it when the model is loaded; it must stay
self-contained (no imports from this project). It is never imported by the pipeline itself.

`mlflow.pyfunc.load_model("models:/review-classifier@champion").predict(pd.DataFrame({"reviewText": [...]}))`
returns a DataFrame with `label` (1 = positive, 0 = negative) and `probability_positive` (softmax of the
positive class). Weights and tokenizer are the model's `classifier` artifact (a save_pretrained directory);
`max_length`, `batch_size` and `text_column` (the contract's text column, written when the model is logged)
come from the model config.
"""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ReviewClassifier(PythonModel):
    def load_context(self, context):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = context.artifacts["classifier"]
        config = context.model_config or {}
        self.max_length = int(config.get("max_length", 128))
        self.batch_size = int(config.get("batch_size", 64))
        self.text_column = str(config["text_column"])
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import numpy as np
        import torch

        if isinstance(model_input, pd.DataFrame):
            if self.text_column not in model_input.columns:
                raise ValueError(f"input needs a '{self.text_column}' column, got {list(model_input.columns)}")
            texts = model_input[self.text_column].fillna("").astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device)
        probs = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad less
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                       padding=True, return_tensors="pt", return_token_type_ids=False)
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
                probs[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        return pd.DataFrame({"label": (probs >= 0.5).astype("int64"), "probability_positive": probs})


mlflow.models.set_model(ReviewClassifier())
