"""The TF-IDF + logistic regression baseline as an MLflow "model from code": review texts in, labels and
probabilities out, with the signature and outputs of the registered transformer (classifier_model.py).

MLflow copies this file into the logged model and runs it when the model is loaded; it must stay self-contained
(no imports from this project). The fitted scikit-learn pipeline is the model's `pipeline` artifact (joblib).

`mlflow.pyfunc.load_model("runs:/<evaluate run>/baseline").predict(pd.DataFrame({"reviewText": [...]}))`
returns the labels (1 = positive); with `params={"output": "probabilities"}` a DataFrame with `label` and
`probability_positive`.
"""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class BaselineClassifier(PythonModel):
    def load_context(self, context):
        import joblib

        self.pipeline = joblib.load(context.artifacts["pipeline"])
        self.text_column = str((context.model_config or {})["text_column"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        output = (params or {}).get("output", "label")
        if output not in ("label", "probabilities"):
            raise ValueError(f"params output={output!r}: use one of label, probabilities")
        if isinstance(model_input, pd.DataFrame):
            if self.text_column not in model_input.columns:
                raise ValueError(f"input needs a '{self.text_column}' column, got {list(model_input.columns)}")
            texts = model_input[self.text_column].fillna("").astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        probs = self.pipeline.predict_proba(texts)[:, 1] if texts else []
        probs = pd.Series(probs, dtype="float64")
        labels = (probs >= 0.5).astype("int64").rename("label")
        if output == "label":
            return labels
        return pd.DataFrame({"label": labels, "probability_positive": probs})


mlflow.models.set_model(BaselineClassifier())
