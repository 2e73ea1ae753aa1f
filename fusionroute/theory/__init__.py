"""A controlled testbed for Section 4 of the paper (token-level MDPs, routing vs complementary logits).

- `mdp`: token-level MDPs with deterministic dynamics, a small vocabulary, a fixed response length
  T and rewards on prefixes, stored as one array per depth; exact V*, Q* by dynamic programming,
  exact evaluation of deterministic policies, and the best policy restricted to given tokens.
- `appendix_a`: the family of MDPs built in the proof of Theorem 4.3 (Appendix A), the exact
  best worst-case value of every routing rule that sees the theorem's observations, and checks of
  the theorem's three assumptions on every member of the family.
- `learned`: random-reward MDPs with fixed softmax experts and a coverage knob; a tiny tabular
  router trained on SFT data sampled from pi* with the project's SFT loss (L_LM + lambda * L_route,
  `fusionroute.trainers.sft_loss_from_output`) and decoded with the project's Eq. 1 rule
  (`fusionroute.decoding.combine_scores`), routing-only vs FusionRoute.
- `report`: the grid behind results/theory/ (table, figure), `python -m fusionroute.theory.report`.
"""
