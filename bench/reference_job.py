"""The main job written with the reference implementation, as a user of transformers would write it.

    python bench/reference_job.py IMAGE "a cat" "a dog" --model DIR

Load AltCLIPModel (SDPA attention) and the XLM-R tokenizer from DIR, preprocess the image with BAAI/AltCLIP's
preprocessor values, run one forward and print each text's probability. bench/cpu.py times this whole process
against `python altclip.py IMAGE "a cat" "a dog" --model DIR`.
"""
import argparse


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("image")
    p.add_argument("texts", nargs="+")
    p.add_argument("--model", required=True, help="folder with config.json, weights and sentencepiece.bpe.model")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)

    import torch
    from PIL import Image
    from transformers import AltCLIPModel, CLIPImageProcessorPil, XLMRobertaTokenizer

    dtype = getattr(torch, args.dtype)
    model = AltCLIPModel.from_pretrained(args.model, attn_implementation="sdpa", dtype=dtype).eval()
    tokenizer = XLMRobertaTokenizer.from_pretrained(args.model)
    processor = CLIPImageProcessorPil(  # BAAI/AltCLIP's preprocessor_config.json
        do_convert_rgb=True, do_resize=True, size={"shortest_edge": 224}, resample=3,
        do_center_crop=True, crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711])

    text = tokenizer(args.texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    pixels = processor(images=Image.open(args.image), return_tensors="pt")["pixel_values"].to(dtype)
    with torch.inference_mode():
        out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    probs = out.logits_per_image.float().softmax(dim=-1)[0]  # (texts,): this image against every text
    for t, prob in sorted(zip(args.texts, probs.tolist()), key=lambda x: -x[1]):
        print(f"{prob:8.4f}  {t}")


if __name__ == "__main__":
    main()
