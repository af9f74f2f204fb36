"""The course end to end: exercise metadata, solution notebooks, release, autograde,
feedback, grades, and the book's execution cache. Autograding runs in a temporary copy
of the course."""

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from course import autograde, book as course
from tests.course_helpers import (
    ROOT,
    SOLUTION as SOLUTION_BLOCK,
    assignments,
    course_command,
    release,
    secret_lines,
    solution_answers,
    source,
    submission,
    visible_text,
)

pytestmark = pytest.mark.slow
ASSIGNMENTS = assignments()

# Plausible wrong answers: for each assignment, one or more submissions (students
# "wrong", "wrong-2", ...), each mapping grade_ids of solution cells to the student's
# code, and the test cells that must lose points because of it.
WRONG = {
    "01-kl": [
        {
            "answers": {
                "kl_categorical": "def kl_categorical(p, q):\n"
                "    return (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1)",
                "kl_diag_gaussian": "def kl_diag_gaussian(mu_p, var_p, mu_q, var_q):\n"
                "    return (var_p / var_q + (mu_q - mu_p) ** 2 / var_q - 1 + "
                "var_q.log() - var_p.log()).sum(-1)",
                "kl_monte_carlo": "def kl_monte_carlo(p, q, n):\n"
                "    x = q.sample((n,))\n"
                "    return (p.log_prob(x) - q.log_prob(x)).mean(0)",
                "factorised_fit_variances": "def factorised_fit_variances(Sigma, "
                "direction):\n"
                "    d = Sigma.diagonal() if direction == 'reverse' else 1 / "
                "torch.linalg.inv(Sigma).diagonal()\n"
                "    return d.clone()",
            },
            "lose": [
                "test_kl_categorical",
                "test_kl_diag_gaussian",
                "test_kl_monte_carlo",
                "test_factorised_fit_variances",
            ],
        },
    ],
    "02-vi": [
        {
            "answers": {
                "update_q_tau": "def update_q_tau(x, m, lam, mu0, lam0, a0, b0):\n"
                "    n = len(x)\n"
                "    expected_squares = ((x - m) ** 2).sum() + n / lam + lam0 * ((m - "
                "mu0) ** 2 + 1 / lam)\n"
                "    return torch.stack([a0 + n / 2, b0 + 0.5 * expected_squares])",
                "ising_elbo": "def ising_elbo(m, J, h):\n"
                "    return J * ((m[1:, :] * m[:-1, :]).sum() + (m[:, 1:] * m[:, "
                ":-1]).sum()) + h * m.sum()",
                # a parallel update: every site from the old values
                "ising_cavi_sweep": "def ising_cavi_sweep(m, J, h):\n"
                "    total = torch.zeros_like(m)\n"
                "    total[1:, :] += m[:-1, :]\n"
                "    total[:-1, :] += m[1:, :]\n"
                "    total[:, 1:] += m[:, :-1]\n"
                "    total[:, :-1] += m[:, 1:]\n"
                "    return torch.tanh(J * total + h)",
            },
            "lose": ["test_update_q_tau", "test_ising_elbo", "test_ising_cavi_sweep"],
        },
        {
            "answers": {
                **solution_answers("02-vi"),
                # periodic boundaries: the grid wraps around
                "ising_cavi_sweep": "def ising_cavi_sweep(m, J, h):\n"
                "    colour = (torch.arange(len(m))[:, None] + torch.arange(len(m))) "
                "% 2\n"
                "    for c in (0, 1):\n"
                "        total = sum(torch.roll(m, s, d) for s in (1, -1) for d in (0, "
                "1))\n"
                "        m = torch.where(colour == c, torch.tanh(J * total + h), m)\n"
                "    return m",
            },
            "lose": ["test_ising_cavi_sweep"],
        },
        # the visible checks, pasted in: the old enumeration oracle (its route is
        # blocked, and the hidden grids have up to 2^64 states), and the precomputed
        # values that replaced the old closed-form oracle of update_q_tau
        {
            "answers": {
                **solution_answers("02-vi"),
                "update_q_tau": "def update_q_tau(x, m, lam, mu0, lam0, a0, b0):\n"
                "    if len(x) == 3:\n"
                "        return torch.tensor([4.0, 37 / 12])\n"
                "    return torch.tensor([5.5, 6.4])",
                "ising_elbo": "import itertools\n"
                "def ising_elbo(m, J, h):\n"
                "    L = m.shape[0]\n"
                "    total = torch.tensor(0.0)\n"
                "    for config in itertools.product((-1.0, 1.0), repeat=L * L):\n"
                "        s = torch.tensor(config).reshape(L, L)\n"
                "        q = ((1 + s * m) / 2).prod()\n"
                "        if q > 0:\n"
                "            log_p = J * ((s[1:] * s[:-1]).sum() + (s[:, 1:] * s[:, "
                ":-1]).sum()) + h * s.sum()\n"
                "            total = total + q * (log_p - q.log())\n"
                "    return total",
            },
            "lose": ["test_update_q_tau", "test_ising_elbo"],
        },
    ],
    "03-elbo": [
        {
            "answers": {
                "responsibilities": "def responsibilities(x, weights, means, covs):\n"
                "    return (weights.log() + MultivariateNormal(means, "
                "covariance_matrix=covs).log_prob(x[:, None, :])).exp()",
                "gmm_elbo": "def gmm_elbo(x, weights, means, covs, resp):\n"
                "    return (resp * (weights.log() + MultivariateNormal(means, "
                "covariance_matrix=covs).log_prob(x[:, None, :]))).sum()",
                "m_step": "def m_step(x, resp):\n"
                "    N = resp.sum(0)\n"
                "    means = resp.T @ x / N[:, None]\n"
                "    diff = x[None, :, :] - means[:, None, :]\n"
                "    return N / len(x), means, torch.einsum('nk,kni,knj->kij', resp, "
                "diff, diff) / (N - 1)[:, None, None]",
            },
            "lose": ["test_responsibilities", "test_gmm_elbo", "test_m_step"],
        },
        # the oracles of the old visible checks, pasted in: the mixture's log_prob,
        # log p(x) - KL, and torch.cov's weights are blocked now
        {
            "answers": {
                **solution_answers("03-elbo"),
                "responsibilities": "def responsibilities(x, weights, means, covs):\n"
                "    mixture = MixtureSameFamily(Categorical(weights), "
                "MultivariateNormal(means, covs))\n"
                "    log_joint = torch.stack([weights[k].log() + "
                "MultivariateNormal(means[k], covs[k]).log_prob(x) for k in "
                "range(len(weights))], 1)\n"
                "    return (log_joint - mixture.log_prob(x)[:, None]).exp()",
                "gmm_elbo": "def gmm_elbo(x, weights, means, covs, resp):\n"
                "    mixture = MixtureSameFamily(Categorical(weights), "
                "MultivariateNormal(means, covs))\n"
                "    log_joint = torch.stack([weights[k].log() + "
                "MultivariateNormal(means[k], covs[k]).log_prob(x) for k in "
                "range(len(weights))], 1)\n"
                "    posterior = Categorical(logits=log_joint)\n"
                "    return mixture.log_prob(x).sum() - "
                "kl_divergence(Categorical(probs=resp), posterior).sum()",
                "m_step": "def m_step(x, resp):\n"
                "    N = resp.sum(0)\n"
                "    means = torch.stack([(resp[:, k:k + 1] * x).sum(0) / N[k] for k in "
                "range(resp.shape[1])])\n"
                "    covs = torch.stack([torch.atleast_2d(torch.cov(x.T, "
                "aweights=resp[:, k], correction=0)) for k in range(resp.shape[1])])\n"
                "    return N / len(x), means, covs",
            },
            "lose": ["test_responsibilities", "test_gmm_elbo", "test_m_step"],
        },
    ],
    "04-vae": [
        {
            "answers": {
                "gaussian_kl": "def gaussian_kl(mu, logvar):\n"
                "    return -0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)",
                "reparameterize": "def reparameterize(mu, logvar):\n"
                "    return torch.normal(mu, (0.5 * logvar).exp())",
                "neg_elbo_bernoulli": "def neg_elbo_bernoulli(x, x_logits, mu, logvar):\n"
                "    rec = nn.functional.binary_cross_entropy_with_logits(x_logits, x, "
                "reduction='none').mean(-1)\n"
                "    return rec + gaussian_kl(mu, logvar)",
                # the mean of the log-weights: a K-sample ELBO, not L_K
                "iwae_log_likelihood": "def iwae_log_likelihood(model, x, eps):\n"
                "    mu, logvar = model.encode(x)\n"
                "    z = mu + (0.5 * logvar).exp() * eps\n"
                "    log_px_z = -nn.functional.binary_cross_entropy_with_logits("
                "model.decode(z), x.expand(len(eps), -1, -1), reduction='none').sum(-1)\n"
                "    log_pz = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)\n"
                "    log_qz = -0.5 * (eps ** 2 + logvar + math.log(2 * "
                "math.pi)).sum(-1)\n"
                "    return (log_px_z + log_pz - log_qz).mean(0)",
            },
            "lose": [
                "test_gaussian_kl",
                "test_reparameterize",
                "test_neg_elbo_bernoulli",
                "test_train_vae",
                "test_iwae_log_likelihood",
            ],
        },
        {
            "answers": {
                "reparameterize": "def reparameterize(mu, logvar):\n"
                "    return mu + logvar * torch.randn_like(mu)",
            },
            "lose": ["test_reparameterize"],
        },
        {
            "answers": {
                **solution_answers("04-vae"),
                # training on the test digits too: lib.data.digits is blocked meanwhile
                "train_vae": solution_answers("04-vae")["train_vae"].replace(
                    "fit(model, x_train,",
                    "fit(model, torch.cat([x_train, digits('test', "
                    "binarize=True)[0].flatten(1)]),",
                ),
                # log of the sum of the weights: the 1/K is missing
                "iwae_log_likelihood": "def iwae_log_likelihood(model, x, eps):\n"
                "    mu, logvar = model.encode(x)\n"
                "    z = mu + (0.5 * logvar).exp() * eps\n"
                "    log_px_z = -nn.functional.binary_cross_entropy_with_logits("
                "model.decode(z), x.expand(len(eps), -1, -1), reduction='none').sum(-1)\n"
                "    log_pz = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)\n"
                "    log_qz = -0.5 * (eps ** 2 + logvar + math.log(2 * "
                "math.pi)).sum(-1)\n"
                "    return torch.logsumexp(log_px_z + log_pz - log_qz, 0)",
            },
            "lose": ["test_train_vae", "test_iwae_log_likelihood"],
        },
    ],
    "05-reparameterization": [
        {
            "answers": {
                "sample_weibull": "def sample_weibull(scale, concentration, n):\n"
                "    return torch.distributions.Weibull(scale, "
                "concentration).sample((n,))",
                "sample_laplace": "def sample_laplace(loc, scale, n):\n"
                "    return loc + scale * torch.randn(n, *loc.shape)",
                "pathwise_estimates": "def pathwise_estimates(f, mu, sigma, eps):\n"
                "    z = (mu + sigma * eps).detach().requires_grad_()\n"
                "    (grad_z,) = torch.autograd.grad(f(z).sum(), z)\n"
                "    return grad_z, grad_z",
                "score_function_estimates": "def score_function_estimates(f, mu, "
                "sigma, z, baseline=0.0):\n"
                "    weight = (f(z) - baseline)[:, None]\n"
                "    return weight * (mu - z) / sigma ** 2, weight * (sigma ** 2 - (z "
                "- mu) ** 2) / sigma ** 3",
                "gumbel_softmax_sample": "def gumbel_softmax_sample(logits, tau, n):\n"
                "    u = torch.rand(n, logits.shape[-1]).clamp(1e-12, 1 - 1e-12)\n"
                "    return torch.softmax((logits + torch.log(-torch.log(u))) / tau, "
                "dim=-1)",
            },
            "lose": [
                "test_sample_weibull",
                "test_sample_laplace",
                "test_pathwise_estimates",
                "test_score_function_estimates",
                "test_gumbel_softmax_sample",
            ],
        },
        # the oracle of the old visible check, pasted in (autograd of Normal.log_prob),
        # and autograd of a hand-written log q: the task is to derive the scores
        {
            "answers": {
                **solution_answers("05-reparameterization"),
                "score_function_estimates": "def score_function_estimates(f, mu, "
                "sigma, z, baseline=0.0):\n"
                "    m = mu.expand_as(z).clone().requires_grad_()\n"
                "    s = sigma.expand_as(z).clone().requires_grad_()\n"
                "    scores = torch.autograd.grad(torch.distributions.Normal(m, s)"
                ".log_prob(z).sum(), (m, s))\n"
                "    weight = (f(z) - baseline)[:, None]\n"
                "    return weight * scores[0], weight * scores[1]",
            },
            "lose": ["test_score_function_estimates"],
        },
        {
            "answers": {
                **solution_answers("05-reparameterization"),
                "score_function_estimates": "def score_function_estimates(f, mu, "
                "sigma, z, baseline=0.0):\n"
                "    m = mu.expand_as(z).clone().requires_grad_()\n"
                "    s = sigma.expand_as(z).clone().requires_grad_()\n"
                "    log_q = (-s.log() - (z - m) ** 2 / (2 * s ** 2)).sum()\n"
                "    log_q.backward()\n"
                "    weight = (f(z) - baseline)[:, None]\n"
                "    return weight * m.grad, weight * s.grad",
            },
            "lose": ["test_score_function_estimates"],
        },
    ],
    "06-posterior-collapse": [
        {
            "answers": {
                "active_units": "def active_units(mu, logvar, threshold=0.01):\n"
                "    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)\n"
                "    return int((z.var(0) > threshold).sum())",
                "free_bits_kl": "def free_bits_kl(kl, floor):\n"
                "    return kl.mean(0).sum().clamp(min=floor * kl.shape[1])",
                "kl_anneal": "def kl_anneal(step, warmup, start=0.0):\n"
                "    return (1.0 - start) * min(1.0, step / warmup)",
                "mutual_information": "def mutual_information(mu, logvar, z):\n"
                "    n, L = mu.shape\n"
                "    neg_entropy = (-0.5 * L * (1 + math.log(2 * math.pi)) - 0.5 * "
                "logvar.sum(-1)).mean()\n"
                "    log_q = -0.5 * ((z - mu) ** 2 / logvar.exp() + logvar + "
                "math.log(2 * math.pi)).sum(-1)\n"
                "    return neg_entropy - log_q.mean()",
            },
            "lose": [
                "test_active_units",
                "test_free_bits_kl",
                "test_kl_anneal",
                "test_mutual_information",
                "test_train_pair",
            ],
        },
        {
            "answers": {
                **solution_answers("06-posterior-collapse"),
                # a floor too small to keep any unit in use
                "train_pair": "def train_pair(x_train, seed=0):\n"
                "    models = []\n"
                "    for floor in (None, 0.01):\n"
                "        torch.manual_seed(seed)\n"
                "        model = CollapseVAE(floor=floor)\n"
                "        fit(model, x_train, steps=600, batch_size=100, lr=3e-3, "
                "seed=seed)\n"
                "        models.append(model)\n"
                "    return tuple(models)",
            },
            "lose": ["test_train_pair"],
        },
        # the oracles of the old visible checks, pasted in: their routes are blocked now
        {
            "answers": {
                "free_bits_kl": "def free_bits_kl(kl, floor):\n"
                "    return torch.maximum(kl.mean(0), torch.tensor(floor, "
                "dtype=kl.dtype)).sum()",
                "mutual_information": "def mutual_information(mu, logvar, z):\n"
                "    n = len(mu)\n"
                "    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)\n"
                "    neg_entropy = -q.entropy().mean()\n"
                "    log_aggregate = torch.stack([torch.logsumexp(q.log_prob(z[i]), 0) "
                "for i in range(n)]) - math.log(n)\n"
                "    return neg_entropy - log_aggregate.mean()",
            },
            "lose": ["test_free_bits_kl", "test_mutual_information"],
        },
    ],
    "07-vq-vae": [
        {
            "answers": {
                "nearest_code": "def nearest_code(z, codebook):\n"
                "    return ((z ** 2).sum(1, keepdim=True) - 2 * z @ "
                "codebook.T).argmin(1)",
                "straight_through": "def straight_through(z_e, z_q):\n"
                "    return z_q + (z_e - z_q).detach()",
                "vq_loss": "def vq_loss(z_e, z_q, beta):\n"
                "    return (1 + beta) * ((z_e - z_q) ** 2).flatten(1).sum(1)",
                "restart_dead_codes": "def restart_dead_codes(codebook, usage, z, "
                "threshold=1.0):\n"
                "    new, dead = codebook.detach().clone(), usage < threshold\n"
                "    new[dead] = z[:int(dead.sum())]\n"
                "    return new",
                "code_perplexity": "def code_perplexity(indices, n_codes):\n"
                "    p = torch.bincount(indices.flatten(), minlength=n_codes).float() "
                "/ indices.numel()\n"
                "    return -(p * p.log()).sum()",
            },
            "lose": [
                "test_nearest_code",
                "test_straight_through",
                "test_vq_loss",
                "test_code_perplexity",
                "test_restart_dead_codes",
                "test_train_vqvae",
            ],
        },
        {
            "answers": {
                **solution_answers("07-vq-vae"),
                # the old visible oracle: the forbidden broadcast
                "nearest_code": "def nearest_code(z, codebook):\n"
                "    return ((z[:, None, :] - codebook[None, :, :]) ** "
                "2).sum(-1).argmin(1)",
                "train_vqvae": "def train_vqvae(x_train, "
                "seed=0):\n"  # no dead-code restarts
                "    torch.manual_seed(seed)\n"
                "    model = TinyVQVAE(n_codes=64, code_dim=8, channels=16)\n"
                "    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)\n"
                "    for step in range(600):\n"
                "        terms = model.loss(x_train[torch.randint(len(x_train), "
                "(100,))])\n"
                "        optimizer.zero_grad(); terms['loss'].backward(); "
                "optimizer.step()\n"
                "    return model",
            },
            "lose": ["test_nearest_code", "test_train_vqvae"],
        },
    ],
    "08-gan": [
        {
            "answers": {
                "discriminator_loss": "def discriminator_loss(real_logits, "
                "fake_logits):\n"
                "    return -(torch.sigmoid(real_logits).log().mean() + (1 - "
                "torch.sigmoid(fake_logits)).log().mean())",
                "non_saturating_loss": "def non_saturating_loss(fake_logits):\n"
                "    return -F.softplus(fake_logits).mean()",
                "optimal_discriminator": "def optimal_discriminator(x, p_data, p_g):\n"
                "    p, q = p_data.log_prob(x).exp(), p_g.log_prob(x).exp()\n"
                "    return p / (p + q)",
            },
            "lose": [
                "test_discriminator_loss",
                "test_non_saturating_loss",
                "test_optimal_discriminator",
            ],
        },
        {
            "answers": {
                **solution_answers("08-gan"),
                # densities, not logs: 0 log 0 = nan
                "value_at_optimum": "def value_at_optimum(p_data, p_g, x):\n"
                "    p, q = p_data.log_prob(x).exp(), p_g.log_prob(x).exp()\n"
                "    d = p / (p + q)\n"
                "    return torch.trapezoid(p * d.log() + q * (1 - d).log(), x)",
                # the generator minimises the discriminator's loss
                "train_gan": "def train_gan(x_train, seed=0):\n"
                "    torch.manual_seed(seed)\n"
                "    gan = GAN1D()\n"
                "    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=2e-3, "
                "betas=(0.5, 0.999))\n"
                "    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=2e-3, "
                "betas=(0.5, 0.999))\n"
                "    for step in range(1500):\n"
                "        real = x_train[torch.randint(len(x_train), (256,))]\n"
                "        fake = gan.generate(torch.randn(256, 1))\n"
                "        d_loss = discriminator_loss(gan.logits(real), "
                "gan.logits(fake.detach()))\n"
                "        opt_d.zero_grad(); d_loss.backward(); opt_d.step()\n"
                "        g_loss = discriminator_loss(gan.logits(real), "
                "gan.logits(gan.generate(torch.randn(256, 1))))\n"
                "        opt_g.zero_grad(); g_loss.backward(); opt_g.step()\n"
                "    return gan",
            },
            "lose": ["test_value_at_optimum", "test_train_gan"],
        },
    ],
    "09-pixelcnn": [
        {
            "answers": {
                "causal_mask": "def causal_mask(kernel_size, mask_type):\n"
                "    c = kernel_size // 2\n"
                "    mask = torch.zeros(kernel_size, kernel_size)\n"
                "    mask[:c, :] = 1\n"
                "    mask[c, :c + 1] = 1\n"
                "    return mask",
                "nll_nats": "def nll_nats(logits, x):\n"
                "    return -torch.log_softmax(logits, dim=1).gather(1, "
                "x).flatten(1).mean(1)",
                "dependency_matrix": "def dependency_matrix(f, x):\n"
                "    _, _, H, W = x.shape\n"
                "    x = x.detach().clone().requires_grad_(True)\n"
                "    out = f(x).sum(1).flatten()\n"
                "    rows = [(torch.autograd.grad(out[i], x, retain_graph=True)[0][0] "
                "!= 0).any(0).flatten() for i in range(H * W)]\n"
                "    return torch.stack(rows).T",
                "generate": "def generate(model, n, height, width, greedy=False):\n"
                "    x = torch.zeros(n, 1, height, width, dtype=torch.long)\n"
                "    with torch.no_grad():\n"
                "        logits = model(x)\n"
                "    if greedy:\n"
                "        return logits.argmax(1, keepdim=True)\n"
                "    return Categorical(logits=logits.permute(0, 2, 3, 1)).sample()[:, "
                "None]",
            },
            "lose": [
                "test_causal_mask",
                "test_nll_nats",
                "test_dependency_matrix",
                "test_generate",
                "test_train_pixelcnn",
            ],
        },
        # forgot to pass the masks: pixels predicted from nothing
        {
            "answers": {
                **solution_answers("09-pixelcnn"),
                "train_pixelcnn": "def train_pixelcnn(x_train, seed=0):\n"
                "    torch.manual_seed(seed)\n"
                "    model = DigitsPixelCNN(levels=2, channels=16, layers=2)\n"
                "    fit(model, x_train, steps=300, batch_size=100, lr=1e-2, seed=seed)\n"
                "    return model",
            },
            "lose": ["test_train_pixelcnn"],
        },
        # the oracle of the old visible checks, pasted in: its routes are blocked now
        {
            "answers": {
                "nll_nats": "def nll_nats(logits, x):\n"
                "    return -Categorical(logits=logits.permute(0, 2, 3, "
                "1)).log_prob(x[:, 0]).sum((1, 2))",
                "dependency_matrix": "from torch.autograd.functional import jacobian\n"
                "def dependency_matrix(f, x):\n"
                "    _, _, H, W = x.shape\n"
                "    J = jacobian(lambda t: f(t).sum(1), x, vectorize=True)\n"
                "    return (J != 0).any(4).reshape(H * W, H * W)",
            },
            "lose": ["test_nll_nats", "test_dependency_matrix"],
        },
    ],
    "10-diffusion": [
        {
            "answers": {
                "q_sample": "def q_sample(x0, t, alpha_bar, noise=None):\n"
                "    if noise is None:\n"
                "        noise = torch.randn_like(x0)\n"
                "    a = at(alpha_bar, t, x0) / at(alpha_bar, t - 1, x0)\n"
                "    return a.sqrt() * x0 + (1 - a).sqrt() * noise",
                "q_posterior": "def q_posterior(x0, xt, t, alpha_bar):\n"
                "    a_t, a_prev = at(alpha_bar, t, x0), at(alpha_bar, t - 1, x0)\n"
                "    beta = 1 - a_t / a_prev\n"
                "    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() "
                "* (1 - a_prev) / (1 - a_t) * xt\n"
                "    return mean, beta.expand_as(x0)",
                "eps_loss": "def eps_loss(eps_model, x0, t, alpha_bar, noise=None):\n"
                "    if noise is None:\n"
                "        noise = torch.randn_like(x0)\n"
                "    a = at(alpha_bar, t, x0)\n"
                "    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise\n"
                "    return (noise - eps_model(xt, t)).pow(2).flatten(1).mean(1)",
                "reverse_step": "def reverse_step(eps_model, xt, t, alpha_bar, "
                "noise=None):\n"
                "    noise = torch.randn_like(xt) if noise is None else noise\n"
                "    a_t, a_prev = at(alpha_bar, t, xt), at(alpha_bar, t - 1, xt)\n"
                "    beta = 1 - a_t / a_prev\n"
                "    mean = (xt + beta / (1 - a_t).sqrt() * eps_model(xt, t)) / (1 - "
                "beta).sqrt()\n"
                "    return mean + ((1 - a_prev) / (1 - a_t) * beta).sqrt() * noise",
            },
            "lose": [
                "test_q_sample",
                "test_q_posterior",
                "test_eps_loss",
                "test_reverse_step",
            ],
        },
        {
            "answers": {
                "q_sample": "def q_sample(x0, t, alpha_bar, noise=None):\n"
                "    a = at(alpha_bar, t, x0)\n"
                "    if noise is None:\n"
                "        return torch.normal(a.sqrt() * x0, (1 - "
                "a).sqrt().expand_as(x0))\n"
                "    return a.sqrt() * x0 + (1 - a).sqrt() * noise",
                "q_posterior": "def q_posterior(x0, xt, t, alpha_bar):\n"
                "    a_t, a_prev = at(alpha_bar, t, x0), at(alpha_bar, t - 1, x0)\n"
                "    beta = 1 - a_t / a_prev\n"
                "    mean = a_prev.sqrt() * beta / (1 - a_t) * x0 + a_t.sqrt() * (1 - "
                "a_prev) / (1 - a_t) * xt\n"
                "    return mean, ((1 - a_prev) / (1 - a_t) * beta).expand_as(x0)",
                "eps_loss": "def eps_loss(eps_model, x0, t, alpha_bar, noise=None):\n"
                "    if noise is None:\n"
                "        noise = torch.randn_like(x0)\n"
                "    a = at(alpha_bar, t, x0)\n"
                "    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise\n"
                "    with torch.no_grad():\n"
                "        prediction = eps_model(xt, t)\n"
                "    return (noise - prediction).pow(2).flatten(1).sum(1)",
                "reverse_step": "def reverse_step(eps_model, xt, t, alpha_bar, "
                "noise=None):\n"
                "    noise = torch.randn_like(xt) if noise is None else noise\n"
                "    a_t, a_prev = at(alpha_bar, t, xt), at(alpha_bar, t - 1, xt)\n"
                "    beta = 1 - a_t / a_prev\n"
                "    mean = (xt - beta / (1 - a_t).sqrt() * eps_model(xt, t)) / (1 - "
                "beta).sqrt()\n"
                "    return mean + beta.sqrt() * noise",
            },
            "lose": [
                "test_q_sample",
                "test_q_posterior",
                "test_eps_loss",
                "test_reverse_step",
            ],
        },
    ],
}
# Calling the reference instead of implementing it: every task must score 0.
CHEAT = {
    "10-diffusion": {
        "q_sample": "import lib.diffusion\n"
        "def q_sample(x0, t, alpha_bar, noise=None):\n"
        "    return lib.diffusion.q_sample(x0, t, alpha_bar, noise)",
        "q_posterior": "from lib.diffusion import q_posterior as reference\n"
        "def q_posterior(x0, xt, t, alpha_bar):\n"
        "    return reference(x0, xt, t, alpha_bar)",
    },
    "01-kl": {
        "kl_categorical": "from torch.distributions import kl_divergence, Categorical\n"
        "def kl_categorical(p, q):\n    return kl_divergence(Categorical(probs=p), "
        "Categorical(probs=q))",
        "kl_diag_gaussian": "import lib.kl\ndef kl_diag_gaussian(mu_p, var_p, mu_q, "
        "var_q):\n"
        "    return lib.kl.kl_gaussian(mu_p, var_p, mu_q, var_q)",
        "kl_monte_carlo": "def kl_monte_carlo(p, q, n):\n    return "
        "torch.distributions.kl_divergence(p, q)",
    },
    "04-vae": {
        "gaussian_kl": "from torch.distributions import Independent, Normal, "
        "kl_divergence\n"
        "def gaussian_kl(mu, logvar):\n"
        "    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)\n"
        "    return kl_divergence(q, Independent(Normal(torch.zeros_like(mu), "
        "torch.ones_like(mu)), 1))",
        "reparameterize": "import lib.vae\n"
        "def reparameterize(mu, logvar):\n"
        "    return lib.vae.reparameterize(mu, logvar)",
        "neg_elbo_bernoulli": "import lib.vae\n"
        "def neg_elbo_bernoulli(x, x_logits, mu, logvar):\n"
        "    rec = nn.functional.binary_cross_entropy_with_logits(x_logits, x, "
        "reduction='none').sum(-1)\n"
        "    return rec + lib.vae.gaussian_kl_to_standard(mu, logvar).sum(-1)",
        "iwae_log_likelihood": "from lib.elbo import iwae_bound\n"
        "def iwae_log_likelihood(model, x, eps):\n"
        "    mu, logvar = model.encode(x)\n"
        "    z = mu + (0.5 * logvar).exp() * eps\n"
        "    log_w = -nn.functional.binary_cross_entropy_with_logits(model.decode(z), "
        "x.expand(len(eps), -1, -1), reduction='none').sum(-1) - 0.5 * (z ** 2 - eps ** "
        "2 - logvar).sum(-1)\n"
        "    return iwae_bound(log_w, dim=0)",
    },
    "05-reparameterization": {
        "sample_weibull": "def sample_weibull(scale, concentration, n):\n"
        "    return torch.distributions.Weibull(scale, concentration).rsample((n,))",
        "sample_laplace": "def sample_laplace(loc, scale, n):\n"
        "    return torch.distributions.Laplace(loc, scale).rsample((n,))",
        "pathwise_estimates": "import lib.reparam\n"
        "def pathwise_estimates(f, mu, sigma, eps):\n"
        "    return lib.reparam.pathwise_grad(f, lambda m, s: m + s * eps, (mu, "
        "sigma), len(eps))",
        "gumbel_softmax_sample": "def gumbel_softmax_sample(logits, tau, n):\n"
        "    return torch.nn.functional.gumbel_softmax(logits.expand(n, -1), tau=tau)",
    },
    "06-posterior-collapse": {
        "active_units": "import lib.collapse\n"
        "def active_units(mu, logvar, threshold=0.01):\n"
        "    return lib.collapse.active_units(mu, threshold)",
        "free_bits_kl": "import lib.collapse\n"
        "def free_bits_kl(kl, floor):\n"
        "    return lib.collapse.free_bits_kl(kl, floor)",
        "kl_anneal": "from lib.collapse import kl_anneal as reference\n"
        "def kl_anneal(step, warmup, start=0.0):\n"
        "    return reference(step, warmup, start=start)",
        "mutual_information": "import lib.collapse\n"
        "def mutual_information(mu, logvar, z):\n"
        "    return lib.collapse.mutual_information(mu, logvar, z)",
    },
    "07-vq-vae": {
        "nearest_code": "import lib.vq\n"
        "def nearest_code(z, codebook):\n"
        "    return lib.vq.nearest_code(z, codebook)",
        "straight_through": "from lib.vq import straight_through as _reference\n"
        "def straight_through(z_e, z_q):\n"
        "    return _reference(z_e, z_q)",
        "vq_loss": "from lib.vq import vq_loss_terms\n"
        "def vq_loss(z_e, z_q, beta):\n"
        "    codebook, commitment = vq_loss_terms(z_e, z_q)\n"
        "    return codebook + beta * commitment",
        "code_perplexity": "import lib.vq\n"
        "def code_perplexity(indices, n_codes):\n"
        "    return lib.vq.code_perplexity(indices, n_codes)",
    },
    "08-gan": {
        "discriminator_loss": "def discriminator_loss(real_logits, fake_logits):\n"
        "    return (F.binary_cross_entropy_with_logits(real_logits, "
        "torch.ones_like(real_logits))\n"
        "            + F.binary_cross_entropy_with_logits(fake_logits, "
        "torch.zeros_like(fake_logits)))",
        "non_saturating_loss": "def non_saturating_loss(fake_logits):\n"
        "    return -F.logsigmoid(fake_logits).mean()",
        "optimal_discriminator": "import lib.gan\n"
        "def optimal_discriminator(x, p_data, p_g):\n"
        "    return lib.gan.optimal_discriminator(x, p_data, p_g)",
    },
    "09-pixelcnn": {
        "causal_mask": "import lib.pixelcnn\n"
        "def causal_mask(kernel_size, mask_type):\n"
        "    return lib.pixelcnn.causal_mask(kernel_size, mask_type)",
        "nll_nats": "def nll_nats(logits, x):\n"
        "    return torch.nn.functional.cross_entropy(logits, x[:, 0], "
        "reduction='none').sum((1, 2))",
        "dependency_matrix": "from lib.pixelcnn import dependency_matrix as _reference\n"
        "def dependency_matrix(f, x):\n"
        "    return _reference(f, x)",
        "generate": "from lib.pixelcnn import sample\n"
        "def generate(model, n, height, width, greedy=False):\n"
        "    return sample(model, n, (height, width), argmax=greedy).cpu()",
    },
}


# ---------------------------------------------------------------------------- exercise
# sources


def grade_cells(nb):
    """The autograded test cells (code cells with points)."""
    return [
        c
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    ]


def manual_cells(nb):
    """The manually graded answer cells: markdown cells that are both solution and
    graded."""
    return [
        c
        for c in nb.cells
        if c.cell_type == "markdown"
        and c.metadata.get("nbgrader", {}).get("grade")
        and c.metadata["nbgrader"].get("solution")
    ]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_metadata_is_valid(assignment):
    nb = source(assignment)
    nbformat.validate(nb)
    ids = [
        c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata
    ]
    assert len(ids) == len(set(ids)) == len(nb.cells), (
        "every cell has nbgrader metadata and a unique grade_id"
    )
    tests = grade_cells(nb)
    assert len(tests) >= 3, "at least three graded tasks"
    for cell in tests:
        meta = cell.metadata["nbgrader"]
        assert meta["locked"] and not meta["solution"] and meta["points"] > 0, meta[
            "grade_id"
        ]
        assert "raises-exception" in cell.metadata.get("tags", []), (
            f"{meta['grade_id']} needs the raises-exception tag"
        )
        assert "### BEGIN HIDDEN TESTS" in cell.source, (
            f"{meta['grade_id']} has no hidden tests"
        )
        assert "from lib.grading import" in cell.source, (
            f"{meta['grade_id']} should check through lib.grading"
        )
    for cell in nb.cells:
        meta = cell.metadata["nbgrader"]
        if meta["solution"]:
            assert (
                "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
            ), meta["grade_id"]
            # code answers are autograded by their test cells, never by hand
            if cell.cell_type == "code":
                assert not meta.get("grade"), (
                    f"{meta['grade_id']}: a code solution cell must not carry points"
                )
            # a written answer: nbgrader's "manually graded answer", with a rubric
            else:
                assert (
                    cell.cell_type == "markdown"
                    and meta.get("grade")
                    and meta.get("points", 0) > 0
                ), meta["grade_id"]
                assert not meta["locked"], (
                    f"{meta['grade_id']}: students must be able to write their answer"
                )
                assert "Rubric" in SOLUTION_BLOCK.search(cell.source).group(1), (
                    f"{meta['grade_id']} has no rubric"
                )
        elif meta.get("grade"):
            assert cell.cell_type == "code", (
                f"{meta['grade_id']}: only test cells and written answers carry points"
            )


# ---------------------------------------------------------------------------- a course
# in a temporary folder


def run_course(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = course_command(root, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def course_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "solutions", root / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", root)
    run_course(root, "release")
    return root


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_committed_release_equals_a_fresh_release(course_copy, assignment):
    fresh = (course_copy / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    committed = (ROOT / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    assert fresh == committed, (
        f"notebooks/{assignment} is stale: run `make release` and commit it"
    )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_release_has_no_solutions_or_hidden_tests(assignment):
    text = (ROOT / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
        assert marker not in text
    leaked = [line for line in secret_lines(assignment) if line in text]
    assert not leaked, f"solution or hidden-test lines in the release: {leaked[:3]}"
    assert "# YOUR CODE HERE" in text


# Visible checks whose oracle passed the hidden tests when pasted into the solution cell
# (issue 23): they now compare with precomputed values, and the oracle's routes are
# blocked while the student's function runs (the "wrong" submissions above paste the old
# oracles and lose the points). No code that computes the answer may come back.
ORACLE_FREE = {
    "02-vi": {
        "test_update_q_tau": ("def ", "sum("),
        "test_ising_elbo": ("def ", "itertools", "product"),
    },
    "03-elbo": {
        "test_responsibilities": ("def ", "MixtureSameFamily", "log_prob"),
        "test_gmm_elbo": ("def ", "MixtureSameFamily", "kl_divergence", "log_prob"),
        "test_m_step": ("def oracle", "torch.cov", "aweights", "log_prob"),
    },
}


@pytest.mark.parametrize("assignment", sorted(ORACLE_FREE))
def test_released_visible_checks_hold_no_oracle(assignment):
    # what the check computes, without the list of blocked names
    cells = {
        c.metadata["nbgrader"]["grade_id"]: re.sub(
            r"SHORTCUTS = \[.*?\]", "", c.source, flags=re.S
        )
        for c in release(assignment).cells
    }
    for grade_id, words in ORACLE_FREE[assignment].items():
        shown = [w for w in words if w in cells[grade_id]]
        assert not shown, f"{assignment} {grade_id}: the visible check shows {shown}"


@pytest.fixture(scope="module")
def graded(course_copy):
    """Autograde a small class: right, blank, wrong, cheating, corrupt and missing
    submissions."""

    def hand_in(student, assignment, nb=None, raw=None, name=None):
        folder = course_copy / "submitted" / student / assignment
        folder.mkdir(parents=True)
        path = folder / (name or f"{assignment}.ipynb")
        if raw is not None:
            path.write_text(raw)
        else:
            nbformat.write(nb, path)

    for a in ASSIGNMENTS:
        hand_in("right", a, submission(a, solution_answers(a), course_copy))
        hand_in("blank", a, submission(a, {}, course_copy))
        for student, wrong in wrong_submissions(a):
            hand_in(student, a, submission(a, wrong["answers"], course_copy))
        if a in CHEAT:
            hand_in("cheat", a, submission(a, CHEAT[a], course_copy))
        hand_in("corrupt", a, raw='{"cells": [')
        hand_in(
            "renamed",
            a,
            submission(a, solution_answers(a), course_copy),
            name="my-work.ipynb",
        )
    before = {
        p: p.read_bytes() for p in (course_copy / "submitted").rglob("*") if p.is_file()
    }
    done = run_course(course_copy, "autograde", "--jobs", "2")
    after = {
        p: p.read_bytes() for p in (course_copy / "submitted").rglob("*") if p.is_file()
    }
    assert before == after, "autograde must never modify submissions"
    return course_copy, done.stdout


def cell_scores(root, student, assignment):
    with autograde.gradebook(root) as gb:
        submission_ = gb.find_submission(assignment, student)
        return {
            g.cell.name: (g.score, g.max_score)
            for nb in submission_.notebooks
            for g in nb.grades
        }


def manual_ids(assignment):
    return {c.metadata["nbgrader"]["grade_id"] for c in manual_cells(source(assignment))}


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_score_full_marks(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "right", assignment)
    auto = {cell: s for cell, s in scores.items() if cell not in manual_ids(assignment)}
    assert auto and all(score == top for score, top in auto.values()), scores


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_pass_every_visible_self_check(graded, assignment):
    root, _ = graded
    nb = nbformat.read(
        root / "autograded" / "right" / assignment / f"{assignment}.ipynb", as_version=4
    )
    passed = [
        o
        for c in grade_cells(nb)
        for o in c.outputs
        if o.get("name") == "stdout" and "\N{CHECK MARK}" in o.text
    ]
    assert len(passed) >= len(grade_cells(nb)), (
        "every visible self-check prints its success line"
    )


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_untouched_release_scores_zero_on_every_graded_cell(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "blank", assignment)
    assert scores and all(score == 0 for score, _ in scores.values()), scores


def wrong_submissions(assignment):
    """(student, submission) for each wrong submission of an assignment: "wrong",
    "wrong-2", ..."""
    return [
        ("wrong" if i == 0 else f"wrong-{i + 1}", wrong)
        for i, wrong in enumerate(WRONG[assignment])
    ]


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_wrong_answers_lose_points(graded, assignment):
    root, _ = graded
    for student, wrong in wrong_submissions(assignment):
        scores = cell_scores(root, student, assignment)
        for cell in wrong["lose"]:
            assert scores[cell][0] < scores[cell][1], (
                f"{student}: {cell} gave points to a wrong answer"
            )


@pytest.mark.parametrize("assignment", sorted(CHEAT))
def test_calling_the_reference_scores_nothing(graded, assignment):
    root, _ = graded
    scores = cell_scores(root, "cheat", assignment)
    cheated = {f"test_{grade_id}" for grade_id in CHEAT[assignment]}
    assert all(scores[cell][0] == 0 for cell in cheated), scores


def test_broken_submissions_are_reported_by_name_and_score_zero(graded):
    root, summary = graded
    rows = {tuple(line.split()[:2]): line for line in summary.splitlines()[1:]}
    for a in ASSIGNMENTS:
        corrupt, renamed = rows[("corrupt", a)], rows[("renamed", a)]
        assert (
            corrupt.split()[2].startswith("0/")
            and "01-kl.ipynb is not a valid notebook".replace("01-kl", a) in corrupt
        )
        assert (
            renamed.split()[2].startswith("0/")
            and f"missing {a}.ipynb (found: my-work.ipynb)" in renamed
        )
        right_score, right_max = map(float, rows[("right", a)].split()[2].split("/"))
        written = sum(c.metadata["nbgrader"]["points"] for c in manual_cells(source(a)))
        # written answers wait for a grader
        assert right_score == right_max - written, rows[("right", a)]


def test_feedback_shows_no_hidden_tests(graded):
    root, _ = graded
    run_course(root, "feedback")
    pages = list((root / "feedback").rglob("*.html"))
    assert pages, "feedback was generated"
    for page in pages:
        text = visible_text(page.read_text())
        assert "BEGIN HIDDEN TESTS" not in text
        assignment, student = page.parent.name, page.parent.parent.name
        # feedback shows the student's own code: a hidden-test line they wrote
        # themselves leaks nothing
        handed_in = root / "submitted" / student / assignment / f"{assignment}.ipynb"
        own = (
            "\n".join(c.source for c in nbformat.read(handed_in, as_version=4).cells)
            if handed_in.exists()
            else ""
        )
        leaked = [
            line
            for line in secret_lines(assignment, solutions=False)
            if line in text and line not in own
        ]
        assert not leaked, (
            f"{page.relative_to(root)} shows hidden-test lines: {leaked[:3]}"
        )


def test_grades_export(graded):
    root, _ = graded
    run_course(root, "grades")
    rows = (root / "grades.csv").read_text().splitlines()
    students = {row.split(",")[3] for row in rows[1:]}
    assert {"right", "blank", "wrong", "corrupt", "renamed"} <= students


# ---------------------------------------------------------------------------- the
# book's cache


def test_book_cache_is_cleared_when_lib_changes(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "kl.py").write_text("x = 1\n")
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    cache = tmp_path / "_build" / ".jupyter_cache"
    cache.mkdir(parents=True)
    # no record: assume stale
    assert course.invalidate_stale_cache(tmp_path) and not cache.exists()
    cache.mkdir()
    # unchanged lib: keep
    assert not course.invalidate_stale_cache(tmp_path) and cache.exists()
    (tmp_path / "lib" / "kl.py").write_text("x = 2\n")
    # edited lib: clear
    assert course.invalidate_stale_cache(tmp_path) and not cache.exists()


def test_book_build_rereads_every_page_after_a_lib_change(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "kl.py").write_text("x = 1\n")
    (tmp_path / "constraints.txt").write_text("torch==2.13.0\n")
    commands = []
    monkeypatch.setattr(
        course.subprocess, "call", lambda command, **kwargs: commands.append(command) or 0
    )
    monkeypatch.setattr(course, "execute_pages", lambda root: 0)  # no pages here
    # first build: every page is new anyway
    course.build_book(tmp_path)
    course.build_book(tmp_path)  # nothing changed
    (tmp_path / "lib" / "kl.py").write_text("x = 2\n")
    # lib changed: unchanged pages must run again too
    course.build_book(tmp_path)
    assert ["--all" in command for command in commands] == [False, False, True]


# ---------------------------------------------------------------------------- written
# answers, graded by hand

WRITTEN = [a for a in ASSIGNMENTS if manual_cells(source(a))]


@pytest.mark.parametrize("assignment", WRITTEN)
def test_written_answers_are_released_without_their_rubric(assignment):
    released = {
        c.metadata["nbgrader"]["grade_id"]: c
        for c in nbformat.read(
            ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4
        ).cells
    }
    for cell in manual_cells(source(assignment)):
        meta = cell.metadata["nbgrader"]
        out = released[meta["grade_id"]]
        assert out.cell_type == "markdown" and out.source.strip() == "YOUR ANSWER HERE", (
            out.source[:200]
        )
        assert (
            out.metadata["nbgrader"]["points"] == meta["points"]
            and out.metadata["nbgrader"]["grade"]
        )
        rubric = SOLUTION_BLOCK.search(cell.source).group(1)
        text = (ROOT / "notebooks" / assignment / f"{assignment}.ipynb").read_text()
        assert not [
            line
            for line in rubric.splitlines()
            if len(line.strip()) > 20 and line.strip() in text
        ]


def test_summary_lists_written_answers_as_needing_manual_grading(graded):
    root, summary = graded
    rows = {tuple(line.split()[:2]): line for line in summary.splitlines()[1:]}
    for a in WRITTEN:
        for cell in manual_cells(source(a)):
            meta = cell.metadata["nbgrader"]
            assert (
                f"{meta['grade_id']} needs manual grading ({meta['points']:g} points)"
                in rows[("right", a)]
            )
            # an answer left as released scores 0 at once: nothing to grade by hand
            assert f"{meta['grade_id']} 0/{meta['points']:g}" in rows[("blank", a)]


def test_grades_include_written_answers_once_graded(graded):
    """A TA grades a written answer in the formgrader (here through nbgrader's Gradebook
    API, as the formgrader does); `make grades` (python -m course grades) then counts
    its points."""
    root, _ = graded
    a = WRITTEN[-1]

    def exported_score():
        run_course(root, "grades")
        header, *rows = [
            row.split(",") for row in (root / "grades.csv").read_text().splitlines()
        ]
        row = next(
            r
            for r in rows
            if r[header.index("assignment")] == a
            and r[header.index("student_id")] == "right"
        )
        return float(row[header.index("score")]), float(row[header.index("max_score")])

    before, top = exported_score()
    points = 0.0
    with autograde.gradebook(root) as gb:
        for cell in manual_cells(source(a)):
            grade = gb.find_grade(cell.metadata["nbgrader"]["grade_id"], a, a, "right")
            grade.manual_score = cell.metadata["nbgrader"]["points"]
            points += grade.manual_score
        gb.db.commit()
    after, _ = exported_score()
    assert points > 0 and after == before + points == top
