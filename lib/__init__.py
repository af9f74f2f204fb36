"""Reference implementations for the deep generative models course.

One module per idea, each readable top to bottom like the chapter it serves:

    device    where tensors live, and seeding
    checks    argument checks with clear errors
    data      sklearn's bundled digits (fixed split, their geometry) and toy 2-D sets
    train     one optimisation loop for every chapter, and ``evaluating(model)``
    nets      networks the chapters share (``mlp``)
    plot      the book's figures
    grading   the exercise notebooks' test cells: checks, and the student kernel's half of
              grading (runs a student's function for the grader, sends back plain data)
    kl        chapter 01: KL divergence
    vi        chapter 02: variational inference (CAVI, mean-field Ising)
    elbo      chapter 03: the evidence lower bound (EM, PPCA, IWAE)
    vae       chapter 04: variational autoencoders (VAE, CVAE, importance-sampled
              likelihood)
    reparam   chapter 05: pathwise and score-function gradients, samplers, Gumbel-softmax
    collapse  chapter 06: posterior collapse (diagnostics: KL, AU, MI; remedies)
    vq        chapter 07: vector-quantised VAE (codebook, straight-through, EMA, restarts)
    gan       chapter 08: adversarial training, the optimal discriminator, mode coverage
    pixelcnn  chapter 09: masked and gated PixelCNNs, causal sampling
    diffusion chapter 10: diffusion models as deep latent-variable models (DDPM)
    zoo       the book's trained models: ``load(name)``, ``save``, the recipes that train
              them (``lib.zoo.<chapter>``) and ``python -m lib.zoo --retrain``

The instructor's tooling (book build, release, autograde, the grading sandbox) is not
here: it is ``course/`` at the repository root, and ``lib`` never imports it or
nbgrader.
"""
