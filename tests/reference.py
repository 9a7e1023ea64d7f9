"""An independent, deliberately plain re-statement of the reference Phi-3-Vision (REFERENCE.md §3 and §5), used
only as the yardstick for parity tests. It works from the state dict alone, with loops and explicit formulas,
and shares no code with the package: PIL padding instead of tensor padding, every crop slot through CLIP (padding
included), per-image projection, eager attention in fp32, longrope cos/sin written out."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


# ---- image processor (§3) ----
def hd_transform(img: Image.Image, hd_num: int) -> Image.Image:
    width, height = img.size
    trans = width < height
    if trans:
        img = img.transpose(Image.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    target = int(np.ceil(new_h / 336) * 336)
    top = int((target - new_h) / 2)
    canvas = Image.new("RGB", (new_w, target), (255, 255, 255))
    canvas.paste(img, (0, top))
    if trans:
        canvas = canvas.transpose(Image.TRANSPOSE)
    return canvas


def process_image(img: Image.Image, num_crops: int):
    hd = hd_transform(img.convert("RGB"), num_crops)
    arr = (np.asarray(hd, dtype=np.float32) / 255.0 - MEAN) / STD
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    glb = F.interpolate(t.unsqueeze(0).float(), size=(336, 336), mode="bicubic")
    h, w = t.shape[1:]
    crops = t.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
    allc = torch.cat([glb, crops])
    pad = torch.zeros(num_crops + 1 - allc.shape[0], 3, 336, 336)
    return torch.cat([allc, pad]), [h, w]


# ---- model (§5) ----
def _ln(x, sd, p, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def _clip_hidden_minus_2(sd, pixels, heads):
    v = "model.vision_embed_tokens.img_processor.vision_model."
    x = F.conv2d(pixels, sd[v + "embeddings.patch_embedding.weight"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    cls = sd[v + "embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd[v + "embeddings.position_embedding.weight"]
    x = _ln(x, sd, v + "pre_layrnorm")
    states = [x]
    n_layers = len({k.split(".")[6] for k in sd if k.startswith(v + "encoder.layers.")})
    for i in range(n_layers):
        p = f"{v}encoder.layers.{i}."
        h = _ln(x, sd, p + "layer_norm1")
        q = F.linear(h, sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"])
        k = F.linear(h, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"])
        val = F.linear(h, sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"])
        b, n, d = q.shape
        hd = d // heads
        q, k, val = (t.view(b, n, heads, hd).transpose(1, 2) for t in (q, k, val))
        att = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, -1) @ val
        att = att.transpose(1, 2).reshape(b, n, d)
        x = x + F.linear(att, sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"])
        h = _ln(x, sd, p + "layer_norm2")
        h = F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        states.append(x)
    return states[-2]


def image_features(sd, pixel_values, image_sizes, clip_heads):
    e = "model.vision_embed_tokens."
    n_img, n_slots = pixel_values.shape[:2]
    feats = _clip_hidden_minus_2(sd, pixel_values.flatten(0, 1), clip_heads)[:, 1:]
    c = feats.shape[-1]
    feats = feats.reshape(n_img, n_slots, 576, c)
    out = []
    for i in range(n_img):
        h_c, w_c = int(image_sizes[i][0]) // 336, int(image_sizes[i][1]) // 336

        def merge(x):  # [N, 576, C] -> [N, 144, 4C]
            n = x.shape[0]
            return x.reshape(n, 24, 24, c).reshape(n, 12, 2, 12, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, 144, 4 * c)

        def newline(x, rows, cols):  # [rows*cols tokens] -> rows of (cols + 1)
            grid = x.reshape(rows, cols, 4 * c)
            sep = sd[e + "sub_GN"].reshape(1, 1, 4 * c).expand(rows, 1, 4 * c)
            return torch.cat([grid, sep], 1).reshape(-1, 4 * c)

        glb = merge(feats[i, :1])[0]
        sub = merge(feats[i, 1 : 1 + h_c * w_c]).reshape(h_c, w_c, 12, 12, 4 * c)
        sub = sub.permute(0, 2, 1, 3, 4).reshape(h_c * 12 * w_c * 12, 4 * c)
        seq = torch.cat([newline(sub, 12 * h_c, 12 * w_c), sd[e + "glb_GN"].reshape(1, 4 * c), newline(glb, 12, 12)])
        h = F.linear(seq, sd[e + "img_projection.0.weight"], sd[e + "img_projection.0.bias"])
        h = F.gelu(h)
        out.append(F.linear(h, sd[e + "img_projection.2.weight"], sd[e + "img_projection.2.bias"]))
    return torch.cat(out)


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


IMAGE_TOKEN_ID = 32044


def reference_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """The reference processor's ids for ours: each row's n-th run of `<|image|>` (32044) ids becomes `-n`."""
    ids = input_ids.clone()
    for row in ids:
        image = row == IMAGE_TOKEN_ID
        starts = image & ~torch.cat([torch.tensor([False]), image[:-1]])
        row[image] = -starts.long().cumsum(0)[image]
    return ids


def logits(sd, cfg: dict, input_ids, pixel_values, image_sizes, attention_mask=None):
    """Reference logits for a batch (`cfg` is the hub-format config dict; `input_ids` as the reference processor
    writes them, negative at image positions)."""
    ids = input_ids.clone()
    positions = torch.nonzero((ids < 0) & (ids > -1e9), as_tuple=True)
    x = F.embedding(ids.clamp(min=0), sd["model.embed_tokens.weight"])
    if len(positions[0]):
        feats = image_features(sd, pixel_values, image_sizes, cfg["vision_config"]["num_attention_heads"])
        x = x.index_put(positions, feats)
    b, n, d = x.shape
    heads = cfg["num_attention_heads"]
    hd = d // heads
    mask = torch.ones(b, n, dtype=torch.long) if attention_mask is None else attention_mask
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    rs = cfg["rope_scaling"]
    orig = cfg["original_max_position_embeddings"]
    factors = torch.tensor(rs["long_factor"] if int(position_ids.max()) + 1 > orig else rs["short_factor"])
    inv = 1.0 / (factors * cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    scale = math.sqrt(1 + math.log(cfg["max_position_embeddings"] / orig) / math.log(orig))
    freqs = position_ids[..., None].float() * inv
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = (emb.cos() * scale)[:, None], (emb.sin() * scale)[:, None]

    def rot(t):
        return torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1)

    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    allowed = causal[None] & mask[:, None, :].bool()
    bias = torch.zeros(b, 1, n, n).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
    eps = cfg["rms_norm_eps"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, sd[p + "input_layernorm.weight"], eps)
        q, k, v = F.linear(h, sd[p + "self_attn.qkv_proj.weight"]).split(d, -1)
        q, k, v = (t.view(b, n, heads, hd).transpose(1, 2) for t in (q, k, v))
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(b, n, d), sd[p + "self_attn.o_proj.weight"])
        h = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = F.linear(h, sd[p + "mlp.gate_up_proj.weight"]).chunk(2, -1)
        x = x + F.linear(up * F.silu(gate), sd[p + "mlp.down_proj.weight"])
    x = _rms(x, sd["model.norm.weight"], eps)
    return F.linear(x, sd["lm_head.weight"])
