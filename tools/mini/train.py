"""Train ``mini`` on the data ``make_data.py`` renders, in three seeded stages:

1. ``vae``: a small 8x ``AutoencoderKL`` (4 latent channels, as SD 1.5), starting from
   tiny's hand-set VAE (which gives pictures back, blocky, before any training), trained
   on random crops of 32, 64 and 128 (whole) pixels, the same pixels per step (small crops
   give many steps an hour; whole pictures keep it faithful at the sizes Silk paints) to
   decode the posterior's mean (Silk encodes to the mean; the variance is set sharp at
   export, as tiny's is): L1 + L1 of the image gradients (sharp edges) + a tiny KL term.
2. ``diffusion``: the UNet and the Depth and Normal ControlNets trained jointly from
   scratch on the VAE's latents of whole pictures (SD 1.5's betas rescaled to zero terminal
   SNR, timesteps biased to high noise, an EMA of the weights; the UNet predicts the clean
   latents, or with ``--prediction epsilon`` the noise with min-SNR weighting); it picks up
   shards ``make_data.py`` writes while it trains. ``decoder`` trains the VAE's decoder on beside it (encoder frozen). Each sample keeps both ControlNets, one of them, or
   none (so each works alone, and together), and its caption is its material family's
   word among random prompt words, or empty (so classifier-free guidance has an
   unconditional branch). The text encoder and tokenizer are tiny's, frozen.
3. ``export``: a standard diffusers folder (``models/mini``): the pipeline (vae, unet,
   text_encoder, tokenizer, scheduler) plus ``controlnet-depth`` and ``controlnet-normal``,
   weights as fp16 safetensors (Silk loads them in the precision it runs in).

    .venv/bin/python tools/mini/train.py vae --data /tmp/mini-data --work /tmp/mini-work --steps 3841
    .venv/bin/python tools/mini/train.py diffusion --data /tmp/mini-data --work /tmp/mini-work --steps 6000
    .venv/bin/python tools/mini/train.py export --work /tmp/mini-work --out models/mini

Each stage stops after ``--steps`` (the recipe's bound: the same work on any machine) or
``--minutes``, whichever comes first. ``make train-mini`` runs the whole recipe.
"""
import argparse
import copy
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.mini.families import FAMILIES  # noqa: E402

UNIT_FOLDERS = {"depth": "controlnet-depth", "normal": "controlnet-normal"}
# SD 1.5's noise schedule, rescaled to zero terminal SNR (Lin et al. 2024, "Common diffusion
# noise schedules and sample steps are flawed"): with SD's own schedule the most-noised latents
# still carry the picture's low frequencies, so a model trained from scratch learnt to take its
# colours and large shapes from the noise and painted the seed's blobs whatever the guides.
# At zero SNR the first step sees pure noise and can only go by the guides (and the prompt).
NOISE_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      rescale_betas_zero_snr=True)
# The first two stages of the recipe ran with SD 1.5's schedule unchanged (--noise-schedule sd15).
NOISE_SCHEDULES = {"zero-snr": NOISE_SCHEDULE, "sd15": dict(NOISE_SCHEDULE, rescale_betas_zero_snr=False)}
# Words of the kind people type; uncorrelated with the pictures, so the model learns to
# let only the family words steer it.
FILLER = ("a photo of", "oil painting", "toy room", "wooden blocks", "glossy ball", "floor", "soft morning light",
          "cosy", "studio", "render", "colourful", "sculpture", "still life", "garden", "city", "night",
          "sunset", "portrait", "landscape", "cinematic", "detailed", "pastel", "vivid", "minimal", "abstract",
          "ceramic", "metal", "stone", "glass", "fabric", "wood", "paper", "toy", "cartoon", "dreamy", "warm",
          "cold", "blue", "red", "green", "yellow", "purple", "orange", "pink", "white", "black", "ancient",
          "modern", "forest", "ocean", "desert", "mountain", "interior", "monkey", "wheel", "columns", "sphere")


def vae_model():
    """tiny's hand-set 8x VAE (decode(encode(x)) gives x back, blocky and with its colours
    normalised, before any training): the starting point, so the short training only has
    to smooth the blocks and keep the colours, not learn an autoencoder from scratch."""
    from bridge.tiny_model import _vae

    return _vae(scaling_factor=1.0)


def unet_model():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)


def controlnet_model(unet):
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 64))
    # Trained from scratch together with the UNet (no frozen model to protect): the zero
    # convolutions start small but not zero, so the guides steer from the first step.
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]:
            torch.nn.init.normal_(block.weight, 0.0, 0.02)
    return controlnet


def load_data(folder: str, skip: tuple = ()) -> tuple[dict, list]:
    """The pictures of every shard in ``folder`` not in ``skip``, and the shards read."""
    shards = [path for path in sorted(glob.glob(os.path.join(folder, "shard_*.npz"))) if path not in skip]
    if not shards and not skip:
        raise SystemExit(f"no shard_*.npz in {folder}: run tools/mini/make_data.py first")
    if not shards:
        return {}, []
    parts = [dict(np.load(path)) for path in shards]
    data = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    print(f"{len(data['rgb'])} pictures from {len(shards)} shards", flush=True)
    return data, shards


def to_tensor(pictures: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255.0


def flip_normals(normal: torch.Tensor) -> torch.Tensor:
    """A mirrored picture's normal picture: mirrored, and x (the R channel, 1 - (x+1)/2) negated."""
    flipped = normal.flip(-1).clone()
    flipped[:, 0] = 1.0 - flipped[:, 0]
    return flipped


class Budget:
    """How long a stage trains: ``--steps`` (the recipe's bound, so a run does the same work on
    any machine) and/or ``--minutes`` (a ceiling); it stops at whichever comes first."""

    def __init__(self, args):
        self.steps, self.seconds = args.steps, (args.minutes * 60 if args.minutes is not None else None)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fraction(self, step: int) -> float:
        """How far through the stage: by steps where they bound it, else by time."""
        if self.steps:
            return step / self.steps
        return self.elapsed() / self.seconds

    def left(self, step: int) -> bool:
        return ((not self.steps or step < self.steps)
                and (self.seconds is None or self.elapsed() < self.seconds))


# Pixels per VAE step: 16 crops of 32x32, or fewer larger ones.
VAE_STEP_PIXELS = 16 * 32 * 32


def crops(generator, pictures: np.ndarray, sizes: tuple, grid: int) -> torch.Tensor:
    """A batch of square crops in [-1, 1], mirrored or not, of one size drawn from ``sizes``
    (as many as make VAE_STEP_PIXELS), at one random place on a ``grid``-pixel grid. Mixed
    sizes, whole pictures among them: the VAE's GroupNorms normalise over the whole input,
    and a VAE trained on 32x32 crops alone gave whole pictures back 2.6x worse than crops."""
    crop = min(int(generator.choice(sizes)), pictures.shape[1], pictures.shape[2])
    index = generator.integers(0, len(pictures), max(1, VAE_STEP_PIXELS // crop ** 2))
    y = int(generator.integers(0, (pictures.shape[1] - crop) // grid + 1)) * grid
    x = int(generator.integers(0, (pictures.shape[2] - crop) // grid + 1)) * grid
    images = to_tensor(pictures[index, y:y + crop, x:x + crop]) * 2 - 1
    return images.flip(-1) if generator.random() < 0.5 else images


def train_vae(args) -> None:
    torch.manual_seed(args.seed)
    generator = np.random.default_rng(args.seed)
    resume = os.path.join(args.work, "vae")
    if args.resume and os.path.exists(resume):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(resume).train()
        print(f"resuming from {resume}", flush=True)
    else:
        vae = vae_model()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    pictures = load_data(args.data)[0]["rgb"]
    budget, step = Budget(args), 0
    while budget.left(step):
        images = crops(generator, pictures, args.crop, grid=1)
        posterior = vae.encode(images).latent_dist
        # Decoded from the mean: Silk encodes pictures to their mean (no sampling), and the
        # variance is set sharp at export, so a deterministic autoencoder is what is used.
        decoded = vae.decode(posterior.mean).sample
        error = decoded - images
        gradient_error = ((error[..., 1:, :] - error[..., :-1, :]).abs().mean()
                          + (error[..., :, 1:] - error[..., :, :-1]).abs().mean())
        loss = error.abs().mean() + 0.5 * gradient_error + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if budget.fraction(step) > 0.7:  # settle for the last 30 %
            for group in optimizer.param_groups:
                group["lr"] = args.lr / 3
        if step % 25 == 0:
            print(f"vae step {step} loss {loss.item():.4f} l1 {error.abs().mean().item():.4f} "
                  f"{budget.elapsed():.0f} s", flush=True)
    # The latents' spread sets the scaling factor, as SD's 0.18215 was set.
    vae.eval()
    with torch.no_grad():
        sample = to_tensor(pictures[generator.integers(0, len(pictures), 64)]) * 2 - 1
        latents = vae.encode(sample).latent_dist.mean
        reconstruction = vae.decode(latents).sample
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    l1 = float((reconstruction - sample).abs().mean() / 2)
    os.makedirs(args.work, exist_ok=True)
    vae.save_pretrained(os.path.join(args.work, "vae"))
    previous = recorded(args.work, "vae") if args.resume else {}
    step += previous.get("steps", 0)
    record(args.work, "vae", seconds_before=previous.get("seconds", 0) + previous.get("seconds_before", 0), steps=step, seconds=round(budget.elapsed()), scaling_factor=scaling,
           reconstruction_l1=l1, pictures=len(pictures))
    print(f"vae: {step} steps, scaling factor {scaling:.4f}, reconstruction L1 {l1:.4f} (of 1)", flush=True)


def train_decoder(args) -> None:
    """More training for the VAE's decoder alone, the encoder frozen: the latents the UNet
    learns from stay exactly the same, so this can run alongside (or after) ``diffusion``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed + 1)
    generator = np.random.default_rng(args.seed + 1)
    source = os.path.join(args.work, "vae")
    if args.resume and os.path.exists(os.path.join(args.work, "vae-decoder")):
        source = os.path.join(args.work, "vae-decoder")  # the same encoder: go on with its decoder
    vae = AutoencoderKL.from_pretrained(source)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    pictures = load_data(args.data)[0]["rgb"]
    budget, step = Budget(args), 0
    while budget.left(step):
        # On the latents' 8-pixel grid: the frozen encoder gives exactly the training set's latents.
        images = crops(generator, pictures, args.crop, grid=8)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
        error = vae.decode(latents).sample - images
        loss = error.abs().mean() + 0.5 * ((error[..., 1:, :] - error[..., :-1, :]).abs().mean()
                                           + (error[..., :, 1:] - error[..., :, :-1]).abs().mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 25 == 0:
            print(f"decoder step {step} loss {loss.item():.4f} l1 {error.abs().mean().item():.4f} "
                  f"{budget.elapsed():.0f} s", flush=True)
    vae.save_pretrained(os.path.join(args.work, "vae-decoder"))
    previous = recorded(args.work, "decoder") if args.resume else {}
    record(args.work, "decoder", steps=step + previous.get("steps", 0),
           seconds=round(budget.elapsed()) + previous.get("seconds", 0))
    print(f"decoder: {step} steps", flush=True)


def training_log(work: str) -> dict:
    path = os.path.join(work, "training.json")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def recorded(work: str, stage: str) -> dict:
    """What ``record`` kept of ``stage`` in an earlier run (a resumed stage adds to it)."""
    return training_log(work).get(stage, {})


def record(work: str, stage: str, **values) -> None:
    log = training_log(work)
    log[stage] = values
    with open(os.path.join(work, "training.json"), "w") as handle:
        json.dump(log, handle, indent=1)


def caption(generator, family: int) -> str:
    if generator.random() < 0.15:
        return ""
    words = list(generator.choice(FILLER, int(generator.integers(0, 5)), replace=False))
    if family >= 0:
        words.insert(int(generator.integers(0, len(words) + 1)), FAMILIES[family])
    return ", ".join(words)


def text_bank(generator, encoder, tokenizer, count: int = 96) -> tuple[torch.Tensor, list]:
    """Embeddings of ``count`` captions per family (and per unthemed scene), index [family + 1][k]."""
    bank = []
    with torch.no_grad():
        for family in range(-1, len(FAMILIES)):
            texts = [caption(generator, family) for _ in range(count)]
            tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            bank.append(encoder(tokens.input_ids)[0])
    return torch.stack(bank)


def text_parts():
    from transformers import CLIPTextModel, CLIPTokenizer

    from bridge.tiny_model import ensure_tiny

    tiny = ensure_tiny()
    return (CLIPTextModel.from_pretrained(os.path.join(tiny, "text_encoder")).eval(),
            CLIPTokenizer.from_pretrained(os.path.join(tiny, "tokenizer")))


def encode_dataset(vae, data: dict) -> torch.Tensor:
    """Latent means of every picture and of its mirror image: (N, 2, 4, h, w)."""
    latents = []
    with torch.no_grad():
        for start in range(0, len(data["rgb"]), 64):
            images = to_tensor(data["rgb"][start:start + 64]) * 2 - 1
            plain = vae.encode(images).latent_dist.mean
            mirrored = vae.encode(images.flip(-1)).latent_dist.mean
            latents.append(torch.stack([plain, mirrored], 1))
    return torch.cat(latents) * vae.config.scaling_factor


class TrainingSet:
    """The pictures' latents (and their mirror images') with their guides, read from the data
    folder's shards; ``refresh`` adds shards written since (training can start while
    ``make_data.py`` still renders)."""

    def __init__(self, folder: str, vae):
        self.folder, self.vae, self.shards = folder, vae, []
        self.latents = self.depth = self.normal = self.families = None
        self.refresh()

    def refresh(self) -> None:
        data, shards = load_data(self.folder, skip=tuple(self.shards))
        if not shards:
            return
        latents = encode_dataset(self.vae, data)
        depth, normal = torch.from_numpy(data["depth"]), torch.from_numpy(data["normal"])
        if self.latents is None:
            self.latents, self.depth, self.normal, self.families = latents, depth, normal, data["family"]
        else:
            self.latents = torch.cat([self.latents, latents])
            self.depth, self.normal = torch.cat([self.depth, depth]), torch.cat([self.normal, normal])
            self.families = np.concatenate([self.families, data["family"]])
        self.shards += shards
        print(f"training set: {len(self.latents)} pictures, latent std {self.latents.std():.3f}", flush=True)

    def batch(self, generator, size: int, crop: int):
        """``size`` pictures (latents, depth and normal pictures, families), each mirrored or not,
        cut to the same ``crop`` latent cells at one random place."""
        y, x = generator.integers(0, self.latents.shape[-1] - crop + 1, 2)
        index = torch.from_numpy(generator.integers(0, len(self.latents), size))
        mirror = torch.from_numpy(generator.integers(0, 2, size))
        clean = self.latents[index, mirror][..., y:y + crop, x:x + crop]
        # The mirrored latents are of the mirrored picture: its guides are mirrored the same way.
        depth = self.depth[index].float()[:, None].repeat(1, 3, 1, 1) / 255
        normal = self.normal[index].permute(0, 3, 1, 2).float() / 255
        mirrored = mirror.bool().view(-1, 1, 1, 1)
        depth = torch.where(mirrored, depth.flip(-1), depth)
        normal = torch.where(mirrored, flip_normals(normal), normal)
        pixels = slice(8 * y, 8 * (y + crop)), slice(8 * x, 8 * (x + crop))
        return (clean, depth[..., pixels[0], pixels[1]], normal[..., pixels[0], pixels[1]],
                self.families[index.numpy()])


def train_diffusion(args) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler

    torch.manual_seed(args.seed)
    generator = np.random.default_rng(args.seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(args.work, "vae")).eval()
    training_set = TrainingSet(args.data, vae)
    encoder, tokenizer = text_parts()
    bank = text_bank(generator, encoder, tokenizer)

    if args.init_from:  # go on from earlier weights (e.g. trained for the other target)
        from diffusers import ControlNetModel, UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(os.path.join(args.init_from, "unet"))
        controlnets = {kind: ControlNetModel.from_pretrained(os.path.join(args.init_from, folder))
                       for kind, folder in UNIT_FOLDERS.items()}
    else:
        unet = unet_model()
        controlnets = {"depth": controlnet_model(unet), "normal": controlnet_model(unet)}
    parts = [unet, *controlnets.values()]
    parameters = [parameter for part in parts for parameter in part.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-2)
    ema = [copy.deepcopy(part).eval().requires_grad_(False) for part in parts]
    scheduler = DDPMScheduler(**NOISE_SCHEDULES[args.noise_schedule])
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=5.0) / snr.clamp(min=1e-8)  # min-SNR-5 for epsilon prediction
    # Which ControlNets a sample keeps: both, depth, normal, none.
    keep_choices = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=torch.float32)
    keep_odds = np.array([0.55, 0.18, 0.18, 0.09])
    size, step, losses = args.batch, 0, []
    budget = Budget(args)
    while budget.left(step):
        if step % 200 == 199:
            training_set.refresh()
        clean, depth_picture, normal_picture, families = training_set.batch(generator, size, args.crop // 8)
        text = bank[torch.from_numpy(families + 1).long(), torch.from_numpy(generator.integers(0, bank.shape[1], size))]
        noise = torch.randn_like(clean)
        # Biased towards high noise (power > 1): there the guides are all the model has to go
        # on, and a model trained with uniform timesteps learnt to denoise from the latents
        # long before it used the guides.
        timesteps = (999.0 * (1.0 - torch.rand(size) ** args.timestep_power)).round().long()
        noisy = scheduler.add_noise(clean, noise, timesteps)
        keep = keep_choices[torch.from_numpy(generator.choice(4, size, p=keep_odds))]
        down, mid = None, None
        for column, (kind, picture) in enumerate((("depth", depth_picture), ("normal", normal_picture))):
            gate = keep[:, column].view(-1, 1, 1, 1)
            residuals, middle = controlnets[kind](noisy, timesteps, text, controlnet_cond=picture, return_dict=False)
            residuals = [gate * residual for residual in residuals]
            middle = gate * middle
            down = residuals if down is None else [a + b for a, b in zip(down, residuals)]
            mid = middle if mid is None else mid + middle
        predicted = unet(noisy, timesteps, text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        if args.prediction == "sample":  # the clean latents: plain MSE (high noise, where layout is decided, counts)
            loss = ((predicted - clean) ** 2).mean()
        else:
            loss = (weights[timesteps].view(-1, 1, 1, 1) * (predicted - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warmup
        optimizer.step()
        step += 1
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, part in zip(ema, parts):
                for kept, live in zip(average.parameters(), part.parameters()):
                    kept.lerp_(live, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} loss {np.mean(losses[-50:]):.4f} {budget.elapsed():.0f} s", flush=True)
        if step % 500 == 0:
            save_diffusion(args.work, ema)
    save_diffusion(args.work, ema)
    record(args.work, f"diffusion ({args.noise_schedule}, timestep power {args.timestep_power:g})",
           prediction=args.prediction, init_from=args.init_from, steps=step, batch=size,
           crop=args.crop, seconds=round(budget.elapsed()), final_loss=float(np.mean(losses[-200:])),
           pictures=len(training_set.latents))
    print(f"diffusion: {step} steps of {size} in {budget.elapsed():.0f} s", flush=True)


def save_diffusion(work: str, ema) -> None:
    unet, depth, normal = ema
    unet.save_pretrained(os.path.join(work, "unet"))
    depth.save_pretrained(os.path.join(work, UNIT_FOLDERS["depth"]))
    normal.save_pretrained(os.path.join(work, UNIT_FOLDERS["normal"]))


def export(args) -> None:
    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)

    encoder, tokenizer = text_parts()
    decoder = os.path.join(args.work, "vae-decoder")  # the same encoder, a longer-trained decoder
    vae = AutoencoderKL.from_pretrained(decoder if os.path.exists(decoder) else os.path.join(args.work, "vae"))
    with torch.no_grad():  # a sharp posterior: a sampled latent is its mean (trained that way)
        vae.quant_conv.weight[4:] = 0.0
        vae.quant_conv.bias[4:] = -30.0
    pipeline = StableDiffusionPipeline(
        vae=vae,
        unet=UNet2DConditionModel.from_pretrained(os.path.join(args.work, "unet")),
        text_encoder=encoder, tokenizer=tokenizer,
        # "trailing": the first step starts at the last timestep, the pure noise it was trained on.
        scheduler=EulerDiscreteScheduler(**NOISE_SCHEDULE, timestep_spacing="trailing",
                                         prediction_type=args.prediction),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    for folder in UNIT_FOLDERS.values():
        controlnet = ControlNetModel.from_pretrained(os.path.join(args.work, folder))
        with torch.no_grad():  # the residuals are linear in these last convolutions: a built-in conditioning scale
            for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                block.weight *= args.controlnet_scale
                block.bias *= args.controlnet_scale
        controlnet.to(torch.float16).save_pretrained(os.path.join(args.out, folder), safe_serialization=True)
    log = os.path.join(args.work, "training.json")
    if os.path.exists(log):
        with open(log) as source, open(os.path.join(args.out, "training.json"), "w") as target:
            target.write(source.read())
    print(f"mini written to {args.out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("vae", "decoder", "diffusion", "export"))
    parser.add_argument("--data", default="/tmp/mini-data")
    parser.add_argument("--work", default="/tmp/mini-work")
    parser.add_argument("--out", default=os.path.join(ROOT, "models", "mini"))
    parser.add_argument("--steps", type=int, default=None,
                        help="train this many steps (the recipe's bound: the same work on any machine)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this many minutes at the latest (default 8 where --steps is not given)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=lambda text: tuple(int(size) for size in text.split(",")), default=None,
                        help="training crop in pixels, a multiple of 8; vae and decoder take a list, one size "
                             "drawn per step (default 32,64,128); diffusion one (default 128, whole pictures)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (vae: 5e-4, diffusion: 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="vae, decoder: go on from the VAE (decoder) in --work")
    parser.add_argument("--prediction", choices=("sample", "epsilon"), default="sample",
                        help="what the UNet predicts: the clean latents (sample; learns the picture from the guides "
                             "in far fewer steps) or the noise (epsilon, with min-SNR weighting)")
    parser.add_argument("--timestep-power", type=float, default=2.0,
                        help="diffusion: timesteps are 999 * (1 - u ** power), u uniform: 1 is uniform, 2 puts "
                             "about half the samples above t = 700")
    parser.add_argument("--noise-schedule", choices=tuple(NOISE_SCHEDULES), default="zero-snr",
                        help="diffusion: SD 1.5's betas rescaled to zero terminal SNR (exported with the model), or "
                             "unchanged")
    parser.add_argument("--controlnet-scale", type=float, default=1.0,
                        help="export: scale the ControlNets' residuals by this (as a conditioning scale would)")
    parser.add_argument("--init-from", help="diffusion: start from the UNet and ControlNets in this folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a shared machine more threads wait on each other")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps is None and args.minutes is None:
        args.minutes = 8.0
    if args.lr is None:
        args.lr = {"vae": 5e-4, "decoder": 3e-4}.get(args.stage, 1e-3)
    if args.crop is None:
        args.crop = (128,) if args.stage == "diffusion" else (32, 64, 128)
    if args.stage == "diffusion":
        args.crop = args.crop[0]
    {"vae": train_vae, "decoder": train_decoder, "diffusion": train_diffusion, "export": export}[args.stage](args)


if __name__ == "__main__":
    main()
