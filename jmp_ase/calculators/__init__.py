"""Using a model: predictors (fine-tuned model, pre-training head), the ASE calculator and errors on
labelled structures."""
